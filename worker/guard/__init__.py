"""Guard backends: the protocol every backend implements, and the factory that picks one."""

from worker.guard.base import GuardBackend, GuardRequest, GuardVerdict, build_backend

__all__ = ["GuardBackend", "GuardRequest", "GuardVerdict", "build_backend"]
