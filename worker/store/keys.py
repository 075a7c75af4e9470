"""Every Redis key guardq writes, in one place (``P`` = GUARDQ_REDIS_PREFIX):

- ``P verdict:<id>``   the verdict JSON, TTL = GUARDQ_VERDICT_TTL_S (the deduplication window); it names
  the hash of the content it judged (``content_sha256``), so a reused id with other content is refused;
- ``P lease:<id>``     ``<token>:<content hash>`` of the delivery moderating ``id`` now; short TTL,
  renewed by its holder;
- ``P chunk:<hash>``   the guard verdict of one chunk of a long text, keyed by a hash of the model and
  the chunk's content, so a redelivery (or the same text under another id) does not pay for it again;
  TTL one day (or the verdict TTL, if shorter);
- ``P force:<id>``     the random token of a forced replay (`guardq dlq replay --force`) allowed to moderate
  ``id`` again and overwrite its verdict, once; TTL = the retry schedule plus a margin; deleted by that
  store, or when the replayed message is dead-lettered again;
- ``P replay:<token>`` the key of the record one `guardq dlq replay` republished with that token: proof
  that the ``guardq.*`` headers of that input record were written by guardq; same TTL as a force;
- ``P replayed:<dlq topic>/<partition>/<offset>``  JSON ``{"at", "replay_count", "forced"}`` for each dead
  letter `guardq dlq replay` republished (``dlq list --pending`` reads them); TTL = the verdict TTL;
- ``P probe``          written by readiness checks and the start-up check (PX a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """The key shapes above under one prefix."""

    prefix: str

    def verdict(self, message_id: str) -> str:
        return f"{self.prefix}verdict:{message_id}"

    def lease(self, message_id: str) -> str:
        return f"{self.prefix}lease:{message_id}"

    def lease_pattern(self) -> str:
        """A SCAN pattern matching every lease under this prefix."""
        return f"{self.prefix}lease:*"

    def chunk(self, digest: str) -> str:
        return f"{self.prefix}chunk:{digest}"

    def force(self, message_id: str) -> str:
        return f"{self.prefix}force:{message_id}"

    def replay(self, token: str) -> str:
        return f"{self.prefix}replay:{token}"

    def replayed(self, dlq_topic: str, partition: int, offset: int) -> str:
        return f"{self.prefix}replayed:{dlq_topic}/{partition}/{offset}"

    def probe(self) -> str:
        return f"{self.prefix}probe"
