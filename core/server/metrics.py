"""GET /metrics (with --metrics): llama-server's Prometheus metrics, read from the scheduler at scrape time.

Names as llama-server's (`llamacpp:` prefix) so its dashboards work; the throughput gauges are averages
over the server's life (llama-server's are since the previous scrape)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class SchedulerCollector:
    def __init__(self, scheduler):
        self.s = scheduler

    def collect(self):
        s = self.s
        total_cells = (s.pool if s.pool is not None else s.n_ctx_slot * len(s.slots)) or 1
        counters = [
            ("prompt_tokens_total", "Number of prompt tokens processed.", s.n_prompt_total),
            ("prompt_seconds_total", "Prompt process time", s.t_prompt_total),
            ("tokens_predicted_total", "Number of generation tokens processed.", s.n_predicted_total),
            ("tokens_predicted_seconds_total", "Predict process time", s.t_predicted_total),
            ("n_decode_total", "Total number of llama_decode() calls", s.n_decode_total),
            ("requests_total", "Requests given a slot", s.n_requests),
        ]
        for name, doc, value in counters:
            c = CounterMetricFamily(f"llamacpp:{name.removesuffix('_total')}", doc)
            c.add_metric([], float(value))
            yield c
        gauges = [
            ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
             s.n_busy_total / s.n_steps if s.n_steps else 0.0),
            ("prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
             s.n_prompt_total / s.t_prompt_total if s.t_prompt_total else 0.0),
            ("predicted_tokens_seconds", "Average generation throughput in tokens/s.",
             s.n_predicted_total / s.t_predicted_total if s.t_predicted_total else 0.0),
            ("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.", s.cells_used / total_cells),
            ("kv_cache_tokens", "KV-cache tokens.", s.cells_used),
            ("requests_processing", "Number of requests processing.", s.n_processing),
            ("requests_deferred", "Number of requests deferred.", s.n_deferred),
        ]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"llamacpp:{name}", doc, value=float(value))


def registry_for(scheduler) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SchedulerCollector(scheduler))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
