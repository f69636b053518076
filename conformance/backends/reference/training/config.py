"""`TrainingNeuronConfig`: the parallelism and training switches a Neuron training model is built with.

Same fields, defaults, validation and side effects as optimum-neuron's (training semantics §1): creating
one requires torch.distributed, builds NxD's model-parallel groups if they do not exist yet, and records
the sizes actually in use. One deliberate difference (deviation ON-08): when the groups already exist with
other sizes than the ones requested, the real class silently adopts the existing sizes; this one raises.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..neuronx_distributed.parallel_layers import parallel_state


def _init_process_group_like_torchrun() -> None:
    """Start the default process group when launched by torchrun, as optimum-neuron's helper does.

    The real helper starts the XLA backend; the reference backend uses gloo on CPU and nccl on CUDA.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)


@dataclass
class TrainingNeuronConfig:
    """Parallelism layout and training switches shared by every module of a Neuron training model.

    After `__post_init__`, `tensor_parallel_size` and `pipeline_parallel_size` are the sizes of the live
    model-parallel groups, `data_parallel_size` (not a dataclass field, so not serialised) is set, and
    sequence parallelism is off when TP is 1.

    Expert parallelism has no field, here as in optimum-neuron 0.4.5: build NxD's groups with
    `parallel_state.initialize_model_parallel(..., expert_model_parallel_size=EP)` (what
    `run_tensor_parallel(..., ep_size=EP)` does) before creating the config, which keeps them. EP ranks
    are data-parallel ranks, so `data_parallel_size` counts them.
    """

    tensor_parallel_size: int = 1
    sequence_parallel_enabled: bool = False
    kv_size_multiplier: int | None = None
    pipeline_parallel_size: int = 1
    virtual_pipeline_parallel_size: int = 1
    pipeline_parallel_num_microbatches: int = 1
    pipeline_parallel_use_zero1_optimizer: bool = False
    gradient_checkpointing: bool = False
    checkpoint_dir: str | Path | None = None
    num_local_ranks_per_step: int = 8
    use_xser: bool = True
    async_save: bool = False
    fuse_qkv: bool = False
    recompute_causal_mask: bool = True
    transpose_nki_inputs: bool = True

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"The tensor parallel size must be >= 1, but {self.tensor_parallel_size} was given here."
            )
        if self.pipeline_parallel_size < 1:
            raise ValueError(
                f"The pipeline parallel size must be >= 1, but {self.pipeline_parallel_size} was given here."
            )
        if isinstance(self.checkpoint_dir, str):
            self.checkpoint_dir = Path(self.checkpoint_dir)

        if not dist.is_initialized():
            _init_process_group_like_torchrun()
            if not dist.is_initialized():
                raise ValueError(
                    "Neuron training requires torch distributed to be initialized. "
                    "You can initialize it by running `torchrun` (or, in tests, "
                    "conformance.launcher.run_on_ranks / conformance.tensor_parallel_run.run_tensor_parallel)."
                )

        if not parallel_state.model_parallel_is_initialized():
            parallel_state.initialize_model_parallel(
                tensor_model_parallel_size=self.tensor_parallel_size,
                pipeline_model_parallel_size=self.pipeline_parallel_size,
            )

        actual_tp = parallel_state.get_tensor_model_parallel_size()
        actual_pp = parallel_state.get_pipeline_model_parallel_size()
        # Deviation ON-08: the real class silently takes the live sizes.
        mismatches = [
            f"{what} parallel size {requested} was requested but the model-parallel groups use {actual}"
            for what, requested, actual in (
                ("tensor", self.tensor_parallel_size, actual_tp),
                ("pipeline", self.pipeline_parallel_size, actual_pp),
            )
            if requested != actual
        ]
        if mismatches:
            raise ValueError(
                "TrainingNeuronConfig does not match the initialized model parallelism: "
                + "; ".join(mismatches)
                + ". Request the sizes the groups were built with, or call "
                "parallel_state.destroy_model_parallel() first (deviation ON-08)."
            )

        self.data_parallel_size = parallel_state.get_data_parallel_size()
        self.tensor_parallel_size = actual_tp
        self.pipeline_parallel_size = actual_pp

        if self.tensor_parallel_size == 1 and self.sequence_parallel_enabled:
            self.sequence_parallel_enabled = False

    def auto_kv_size_multiplier(self, num_key_value_heads: int) -> int:
        """The kv size multiplier that gives every TP rank one KV head: `max(1, T // KV)`.

        Raises ValueError if `kv_size_multiplier` was set to another value.
        """
        kv_size_multiplier = max(1, self.tensor_parallel_size // num_key_value_heads)
        if self.kv_size_multiplier is not None and self.kv_size_multiplier != kv_size_multiplier:
            raise ValueError(
                "A kv size multiplier was already specified and is different from the inferred one: "
                f"{self.kv_size_multiplier} (inferred {kv_size_multiplier} for {num_key_value_heads} key/value "
                f"heads at tensor parallel size {self.tensor_parallel_size})."
            )
        return kv_size_multiplier

    @property
    def model_parallelism_enabled(self) -> bool:
        """True when tensor or pipeline parallelism is on."""
        return self.tensor_parallel_size > 1 or self.pipeline_parallel_size > 1
