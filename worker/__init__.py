"""guardq: an asynchronous Kafka moderation worker for LLM traffic."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("guardq")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
