"""Drop-in interfaces of other libraries on top of pydeq's engine: ``pydeq.compat.torchdiffeq``."""

from . import torchdiffeq

__all__ = ["torchdiffeq"]
