"""The backend a worker uses, chosen by GUARDQ_GUARD_BACKEND. Backends are imported when chosen, so the
local classifier (an extra) is never imported by a worker that talks to a Qwen3Guard server."""

from __future__ import annotations

from worker.config.settings import Settings
from worker.guard.base import GuardBackend


def build_backend(settings: Settings) -> GuardBackend:
    """The backend named by GUARDQ_GUARD_BACKEND."""
    if settings.guard_backend == "local":
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
    return backends[settings.guard_backend](
        base_url=settings.guard_url,
        model=settings.guard_model,
        api_key=settings.guard_api_key,
        timeout_s=settings.guard_timeout_s,
        pool_size=settings.concurrency_cap,
        tls_verify=settings.guard_tls_verify,
        ca_file=settings.guard_ca_file,
    )
