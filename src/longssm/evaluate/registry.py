"""Metric registry (placeholder until the evaluation redesign lands)."""

METRICS = ("ppl_vs_length", "position_ppl", "effective_remembrance", "passkey", "state_stats")


def metric_names() -> tuple[str, ...]:
    return METRICS
