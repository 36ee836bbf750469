"""The server's Prometheus metrics (GET /metrics), in a registry of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2cli.server.engine import Engine

# Seconds: from a few milliseconds (a tiny model's step) to a long queue wait.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Counters, gauges and histograms of one server."""

    def __init__(self, engine: Engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        running = Gauge("gpt2cli_requests_running", "Rows decoding now.", registry=registry)
        waiting = Gauge(
            "gpt2cli_requests_waiting", "Rows submitted, waiting for a slot.", registry=registry
        )
        running.set_function(lambda: engine.running)
        waiting.set_function(lambda: engine.waiting)
        in_flight = Gauge(
            "gpt2cli_requests_in_flight", "Requests admitted (slots plus queue).",
            registry=registry,
        )
        in_flight.set_function(lambda: engine.in_flight)
        self.prompt_tokens = Counter(
            "gpt2cli_prompt_tokens", "Prompt tokens processed.", registry=registry
        )
        self.generated_tokens = Counter(
            "gpt2cli_generated_tokens", "Tokens generated.", registry=registry
        )
        self.ttft = Histogram(
            "gpt2cli_time_to_first_token_seconds", "From a request's arrival to its first token.",
            buckets=TTFT_BUCKETS, registry=registry,
        )
        self.itl = Histogram(
            "gpt2cli_inter_token_latency_seconds", "Between two tokens of one request.",
            buckets=ITL_BUCKETS, registry=registry,
        )
        self.responses = Counter(
            "gpt2cli_http_responses", "HTTP responses by status class.", ["status"],
            registry=registry,
        )
        for status in ("2xx", "4xx", "5xx"):
            self.responses.labels(status)

    def count_response(self, status: int) -> None:
        self.responses.labels(f"{status // 100}xx").inc()

    def count_error(self, status: int) -> None:
        """An error reported inside a stream that had already answered 200."""
        self.count_response(status)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
