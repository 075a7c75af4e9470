"""Metrics, tracing and logs: used by every layer above."""
