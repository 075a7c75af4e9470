"""Connecting to Redis: the client every part of guardq uses (a pool that blocks when it is exhausted),
the password and TLS options kept beside the URL, and deleting a prefix's keys (tests, demo, benchmark)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from redis.asyncio import BlockingConnectionPool, Redis

if TYPE_CHECKING:
    from worker.config.settings import Settings


@dataclass(frozen=True)
class RedisSecurity:
    """Redis AUTH and TLS options kept beside the URL: GUARDQ_REDIS_PASSWORD and GUARDQ_REDIS_TLS_*."""

    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSecurity:
        """The options of ``settings``."""
        return cls(
            password=settings.redis_password,
            tls_ca_file=settings.redis_tls_ca_file,
            tls_cert_file=settings.redis_tls_cert_file,
            tls_key_file=settings.redis_tls_key_file,
            tls_verify=settings.redis_tls_verify,
        )

    def __repr__(self) -> str:
        shown = "'***'" if self.password else "None"
        return (
            f"RedisSecurity(password={shown}, tls_ca_file={self.tls_ca_file!r}, "
            f"tls_cert_file={self.tls_cert_file!r}, tls_key_file={self.tls_key_file!r}, "
            f"tls_verify={self.tls_verify})"
        )

    def connection_kwargs(self, url: str) -> dict[str, Any]:
        """The redis-py connection keyword arguments for ``url``. TLS options go only to a rediss:// URL:
        a plain connection class refuses them."""
        kwargs: dict[str, Any] = {}
        if self.password:
            kwargs["password"] = self.password
        if urlparse(url).scheme != "rediss":
            return kwargs
        kwargs["ssl_cert_reqs"] = "required" if self.tls_verify else "none"
        # Without verification there is no trusted name to check either (and the SSL module insists).
        kwargs["ssl_check_hostname"] = self.tls_verify
        if self.tls_ca_file:
            kwargs["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            kwargs["ssl_certfile"] = self.tls_cert_file
            kwargs["ssl_keyfile"] = self.tls_key_file
        return kwargs


def connect_redis(url: str, *, max_connections: int, security: RedisSecurity | None = None) -> Redis:
    """A Redis client whose pool blocks (rather than grows without bound) when every connection is busy;
    ``security`` adds the password and TLS options that are not in the URL."""
    extra = (security or RedisSecurity()).connection_kwargs(url)
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=30, socket_timeout=10, socket_connect_timeout=5, **extra
    )
    return Redis(connection_pool=pool)


async def delete_prefix(url: str, prefix: str, *, batch: int = 5000) -> int:
    """Delete every key under ``prefix`` (a test's, a demo run's or a benchmark's); returns how many."""
    client = Redis.from_url(url)
    deleted = 0
    try:
        keys: list[bytes] = []
        async for key in client.scan_iter(match=prefix + "*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += await client.delete(*keys)
                keys = []
        if keys:
            deleted += await client.delete(*keys)
    finally:
        await client.aclose()
    return deleted
