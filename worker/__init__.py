"""guardq: an asynchronous Kafka moderation worker for LLM traffic."""
