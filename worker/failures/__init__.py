"""The failure machinery: dead-letter envelope, retry schedule and topics, the outbox, replay."""
