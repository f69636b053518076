"""NxD's `trainer` package: only `save_checkpoint` (the model-parallel checkpoint writer hosts call)."""

from .checkpoint import save_checkpoint

__all__ = ["save_checkpoint"]
