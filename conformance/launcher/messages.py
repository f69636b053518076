"""Wire format between the launcher and its rank workers (bytes over one pipe per worker).

The launcher sends a cloudpickled `Call`, or `SHUTDOWN`; each worker answers every message but `SHUTDOWN`
with one encoded `Reply` (startup included: the first reply says the worker is ready).
"""

from __future__ import annotations

import io
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from conformance.launcher.outcome import RankFailure
from conformance.launcher.source_map import SourceMap, dumps_with_source_map

SHUTDOWN = b""
"""Asks a worker to destroy its process group and exit; never a valid pickle."""


@dataclass(frozen=True)
class Call:
    """One `run_on_ranks` call, identical for every rank."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    before: Callable[[], object] | None = None
    after: Callable[[], object] | None = None


@dataclass(frozen=True)
class Reply:
    """A worker's answer: `value` when `failure` is None."""

    value: Any = None
    failure: RankFailure | None = None
    group_alive: bool = True


def encode_call(call: Call) -> tuple[bytes, SourceMap]:
    """Pickle a call, and say where its by-value functions came from (see `source_map`)."""
    return dumps_with_source_map(call)


def decode_call(data: bytes) -> Call:
    return pickle.loads(data)


def encode_reply(reply: Reply) -> bytes:
    """Pickle a reply with tensors detached, on CPU and compact.

    CPU, so the launcher needs no accelerator; compact, so returning a slice of a large tensor does not
    ship the whole storage it views.
    """
    buffer = io.BytesIO()
    _ReplyPickler(buffer).dump(reply)
    return buffer.getvalue()


def decode_reply(data: bytes) -> Reply:
    return pickle.loads(data)


def _same(obj: Any) -> Any:
    return obj


class _ReplyPickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")  # no torch imported means no tensors to convert
        if torch is not None and isinstance(obj, torch.Tensor) and _needs_conversion(torch, obj):
            tensor = obj.detach().cpu()
            if _is_partial_view(torch, tensor):
                tensor = tensor.clone()
            return _same, (tensor,)
        return super().reducer_override(obj)


def _needs_conversion(torch: Any, tensor: Any) -> bool:
    return tensor.requires_grad or tensor.device.type != "cpu" or _is_partial_view(torch, tensor)


def _is_partial_view(torch: Any, tensor: Any) -> bool:
    if tensor.layout != torch.strided or tensor.device.type != "cpu":
        return False
    return tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size()
