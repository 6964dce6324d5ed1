"""Generation backends behind one interface (`Backend`): `openai` and `local`."""

from __future__ import annotations

from dmesr.enhance.backends.base import Backend, Request, Result
from dmesr.enhance.config import EnhanceConfig

__all__ = ["Backend", "Request", "Result", "make_backend"]


def make_backend(cfg: EnhanceConfig) -> Backend:
    """The backend named by `cfg.backend` (imports are lazy: each has heavy dependencies)."""
    if cfg.backend == "openai":
        from dmesr.enhance.backends.openai import OpenAIBackend

        return OpenAIBackend(cfg.openai, cfg.model_tag())
    from dmesr.enhance.backends.local import LocalBackend

    return LocalBackend(cfg.local, cfg.model_tag())
