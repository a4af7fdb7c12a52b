"""HF checkpoint folder -> GGUF, byte for byte what llama.cpp's convert_hf_to_gguf.py writes.

Modules, in the order a conversion uses them:

- `hparams`     config.json through transformers' AutoConfig (its defaults reach the metadata)
- `archs`       one class per HF architecture: tensor renames/fixes (Q/K permute, Gemma norm +1,
                embedding rows), hyper-parameters, which vocabulary to write
- `checkpoint`  safetensors headers (single file or shards + index), validated; tensors read lazily
- `plan`        every output tensor's name, shape and type, worked out on torch's meta device,
                and the checks against the config (missing tensors, contradicting shapes)
- `metadata`    general.* keys (gguf.Metadata) and the reference's default file name
- `text_params` the hyper-parameter keys every text model writes
- `vocab`, `special_tokens`, `pretok_hashes`  BPE / SentencePiece / WordPiece export
- `spool`       tensor data converted in a background thread while the vocabulary is built
- `writer`      tensor casts and quantisation, GGUF layout, temporary file renamed into place
- `pipeline`    the order of operations (the reference's, so keys land in the same order)

Exactness notes: casts run in torch, which rounds like the reference's numpy/gguf code except for
NaN payloads (those tensors fall back to the reference's path); q8_0 uses gguf.quants, as the
reference does. Tests compare against the reference converter itself (tests/test_convert*.py).
"""
