"""`neuronx_distributed.trainer.checkpoint.save_checkpoint`: NxD's model-parallel checkpoint layout.

    <checkpoint_dir>/<tag>/checkpoint, <tag>/done                          marker files, content "1"
    <checkpoint_dir>/<tag>/model/dp_rank_00_tp_rank_{TT:02d}_pp_rank_{PP:02d}.pt   the rank's state dict
    <checkpoint_dir>/<tag>/optim/dp_rank_00_tp_rank_{TT:02d}_pp_rank_{PP:02d}.pt   with an optimizer

DP rank 0 of each (TP, PP) position writes. With expert parallelism (EP > 1) the names carry the EP rank,
`dp_rank_00_ep_rank_{EE:02d}_tp_rank_{TT:02d}_pp_rank_{PP:02d}.pt`, and expert-data-parallel rank 0 of each
(EP, TP, PP) position writes its whole state dict (its experts and a copy of everything else). Local ranks
take turns `num_workers` at a time. Files are always
plain torch.save files, written synchronously (deviation NXD-19: the real trainer writes torch-xla's
serialized format with `use_xser=True` and can save asynchronously). Schedulers, user content, checkpoint
rotation and ZeRO-1 optimizer sharding are not implemented: asking for them is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ...deviation_record import note
from ...local_rank_turns import barrier, by_rank_groups
from ..parallel_layers import parallel_state

g_iostate = None
"""NxD's handle on a pending asynchronous save; saves here are synchronous, so there is never one."""


def save_checkpoint(
    checkpoint_dir_str: str,
    tag: str,
    model: nn.Module | dict[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    user_content: Any = None,
    num_workers: int = 8,
    use_xser: bool = False,
    num_kept_ckpts: int | None = None,
    async_save: bool = False,
    zero1_optimizer: bool = False,
    use_zero1_dcp: bool = False,
    avoid_saving_lower_precision_weights: bool = False,
) -> None:
    """Write `model` (a module, whose `state_dict()` is saved, or a state dict itself, as for PEFT adapters)
    and `optimizer` under `<checkpoint_dir>/<tag>`; global rank 0 writes `checkpoint` first and `done` once
    every rank has written. `use_xser` and `async_save` are accepted and write the plain format synchronously.
    """
    del use_xser, async_save
    note("NXD-19")  # always the plain format, synchronously
    unsupported = {
        "scheduler": scheduler is not None,
        "user_content": user_content is not None,
        "num_kept_ckpts": num_kept_ckpts is not None,
        "zero1_optimizer": zero1_optimizer or use_zero1_dcp,
        "avoid_saving_lower_precision_weights": avoid_saving_lower_precision_weights,
    }
    asked = [name for name, given in unsupported.items() if given]
    if asked:
        raise NotImplementedError(
            f"the reference backend's save_checkpoint does not implement {', '.join(asked)}"
        )
    tag_dir = Path(checkpoint_dir_str) / tag
    if dist.get_rank() == 0:
        tag_dir.mkdir(parents=True, exist_ok=True)
        (tag_dir / "checkpoint").write_text("1")
    items: list[tuple[Any, str]] = []
    if _writes_shards():
        if model is not None:
            state = model if isinstance(model, dict) else model.state_dict()
            items.append((state, _shard_file_name("model")))
        if optimizer is not None:
            items.append((optimizer.state_dict(), _shard_file_name("optim")))

    def write() -> None:
        for obj, relative in items:
            path = tag_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(_cpu_copy(obj), path)

    by_rank_groups(num_workers, write)
    if dist.get_rank() == 0:
        (tag_dir / "done").write_text("1")
    barrier()


def _cpu_copy(value: Any) -> Any:
    """Tensors of a (nested) state dict on CPU; views are copied so a file holds only its own data."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.untyped_storage().nbytes() > tensor.nbytes:
            tensor = tensor.clone()
        return tensor
    if isinstance(value, dict):
        return type(value)((k, _cpu_copy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return value


def _expert_parallel() -> bool:
    return parallel_state.get_expert_model_parallel_size() > 1


def _writes_shards() -> bool:
    """Whether this rank writes its shard: the first of the ranks that hold the same one."""
    if _expert_parallel():
        return parallel_state.get_expert_data_parallel_rank() == 0
    return parallel_state.get_data_parallel_rank() == 0


def _shard_file_name(kind: str) -> str:
    tp = parallel_state.get_tensor_model_parallel_rank()
    pp = parallel_state.get_pipeline_model_parallel_rank()
    ep = f"ep_rank_{parallel_state.get_expert_model_parallel_rank():02d}_" if _expert_parallel() else ""
    return f"{kind}/dp_rank_00_{ep}tp_rank_{tp:02d}_pp_rank_{pp:02d}.pt"
