"""Kafka plumbing: clients, the fetch loop, guardq's own record-batch reader, codecs, topic reading, publishing."""
