"""The telemetry actor: metrics from every actor, tail-sampled traces, OTLP export (see actor.py)."""
