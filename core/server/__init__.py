"""`llamatorch server`: continuous batching over one Engine (scheduler.py) behind OpenAI's and
llama-server's HTTP endpoints (api.py, request bodies in schemas.py)."""
