"""Guard backends: the protocol every backend implements, and the factory that picks one."""

from worker.core.guard_types import GuardRequest, GuardVerdict
from worker.guard.base import GuardBackend
from worker.guard.factory import build_backend

__all__ = ["GuardBackend", "GuardRequest", "GuardVerdict", "build_backend"]
