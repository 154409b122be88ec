"""Runtime backends: how a command or app becomes a running process (group)."""

from .base import ProcessHandle, ProcessSpec, RuntimeBackend, SpawnError
from .native import NativeBackend

__all__ = ["NativeBackend", "ProcessHandle", "ProcessSpec", "RuntimeBackend", "SpawnError"]
