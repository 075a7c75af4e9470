"""What happens to one record: the pipeline, the guard call, retries, breaker, throttle, limiter, chunking."""
