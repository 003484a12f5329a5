"""The server's Prometheus metrics, in a registry of its own (several servers may share a process
in tests)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
  def __init__(self):
    self.registry = CollectorRegistry()
    r = self.registry
    self.requests = Counter("jaxlm_requests", "HTTP requests by route and status",
                            ["route", "status"], registry=r)
    self.prompt_tokens = Counter("jaxlm_prompt_tokens", "Prompt tokens prefilled", registry=r)
    self.generation_tokens = Counter("jaxlm_generation_tokens", "Tokens generated", registry=r)
    self.queue_depth = Gauge("jaxlm_queue_depth", "Requests waiting for a slot", registry=r)
    self.active_slots = Gauge("jaxlm_active_slots", "Slots generating", registry=r)
    self.ttft = Histogram("jaxlm_time_to_first_token_seconds", "Submission to first token",
                          buckets=LATENCY_BUCKETS, registry=r)
    self.tpot = Histogram("jaxlm_time_per_output_token_seconds",
                          "Mean time per token after the first, per choice",
                          buckets=LATENCY_BUCKETS, registry=r)

  def watch(self, scheduler) -> None:
    """Queue depth and active slots read from the scheduler at each scrape."""
    self.queue_depth.set_function(lambda: len(scheduler.waiting))
    self.active_slots.set_function(lambda: scheduler.active)

  def render(self) -> bytes:
    return generate_latest(self.registry)
