"""guardq's client: publish texts for moderation, await their verdicts, read the verdict topic.

    from worker.client import Publisher

    async with Publisher("kafka:9092", redis_url="redis://redis:6379/0") as guard:
        verdict = await guard.moderate("some LLM output", timeout_s=5)

Nothing here needs the worker's settings object; ``from_env()`` reads the same GUARDQ_* variables.
"""

from worker.client.consumer import VerdictConsumer
from worker.client.publisher import ModerationTimeout, Publisher, VerdictConflict
from worker.core.errors import InvalidInput
from worker.core.verdict import ProvisionalVerdict, Verdict, parse_verdict

__all__ = [
    "InvalidInput",
    "ModerationTimeout",
    "ProvisionalVerdict",
    "Publisher",
    "Verdict",
    "VerdictConflict",
    "VerdictConsumer",
    "parse_verdict",
]
