"""The backend a worker uses, chosen by GUARDQ_GUARD_BACKEND. Backends are imported when chosen, so the
local classifier (an extra) is never imported by a worker that talks to a guard server."""

from __future__ import annotations

from worker.config.settings import Settings
from worker.guard.base import GuardBackend


def build_backend(settings: Settings) -> GuardBackend:
    """The backend named by GUARDQ_GUARD_BACKEND."""
    return backend_for(
        settings.guard_backend,
        base_url=settings.guard_url,
        model=settings.guard_model,
        api_key=settings.guard_api_key,
        timeout_s=settings.guard_timeout_s,
        pool_size=settings.concurrency_cap,
        tls_verify=settings.guard_tls_verify,
        ca_file=settings.guard_ca_file,
        connect_timeout_s=settings.guard_connect_timeout_s,
    )


def backend_for(
    name: str,
    *,
    base_url: str,
    model: str,
    api_key: str | None,
    timeout_s: float,
    pool_size: int,
    tls_verify: bool = True,
    ca_file: str | None = None,
    connect_timeout_s: float | None = None,
) -> GuardBackend:
    """A backend by name (``worker.core.taxonomies.BACKENDS``) for one guard server."""
    if name == "local":
        from worker.guard.local import LocalBackend

        return LocalBackend()
    from worker.guard.http import GuardHttp
    from worker.guard.llamaguard import LlamaGuardBackend
    from worker.guard.moderation import OpenAIModerationBackend
    from worker.guard.qwen3guard import Qwen3GuardBackend

    backends: dict[str, type[GuardHttp]] = {
        "qwen3guard": Qwen3GuardBackend,
        "llamaguard": LlamaGuardBackend,
        "openai-moderation": OpenAIModerationBackend,
    }
    return backends[name](
        base_url=base_url,
        model=model,
        api_key=api_key,
        timeout_s=timeout_s,
        pool_size=pool_size,
        tls_verify=tls_verify,
        ca_file=ca_file,
        connect_timeout_s=connect_timeout_s,
    )
