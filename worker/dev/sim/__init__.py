"""The simulated Qwen3Guard server (vLLM's wire format) with latency, capacity and fault knobs."""
