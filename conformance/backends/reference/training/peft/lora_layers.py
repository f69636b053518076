"""LoRA layers for NxD's parallel linears (reference twin of `optimum.neuron.peft.tuners.lora.layer`).

A LoRA pair `B @ A` beside a sharded base weight is sharded so that it needs no communication of its
own beyond what the base layer does (training semantics §2.5(c), §2.6(c)):

| base layer                      | lora_A                                    | lora_B                                    |
|---------------------------------|-------------------------------------------|-------------------------------------------|
| `ColumnParallelLinear`          | `nn.Linear(in, r)`, replicated            | `ColumnParallelLinear(r, out)`, rows sharded |
| `RowParallelLinear`             | `RowParallelLinear(in, r)`, columns sharded | `nn.Linear(r, out)`, replicated          |
| `GQAQKVColumnParallelLinear`    | `nn.Linear(in, r)`, replicated            | `GQAQKVColumnParallelLinear(r, sizes)`: q/k/v laid out like the base |

The parallel halves copy the base layer's `gather_output` / `input_is_parallel` and sequence-parallel
settings, so with sequence parallelism a column pair sees the same sequence shard as its base layer and
gathers it in lora_B, and a row pair reduce-scatters in lora_A. A plain `nn.Linear` is left to PEFT's own
`lora.Linear`. With sequence parallelism the replicated half is tagged `sequence_parallel_enabled` so that
its per-rank partial gradient is summed over TP by the training step (deviation ON-14). Parameter names are PEFT's (`lora_A.<adapter>.weight`; `lora_B.<adapter>.weight_q`, ... for
the GQA layer), which is what the transformation specs and the adapter checkpoints use.

Supported: plain LoRA (`init_lora_weights` True, False or "gaussian", dropout, rsLoRA, `lora_bias` on the
column/row layers), several adapters, enabling and disabling adapters. Not supported (NotImplementedError):
DoRA, the initialisations that need the full base weight (PiSSA, OLoRA, LoftQ, CorDA, EVA, orthogonal),
merging into the sharded base weights, and LoRA on `ParallelEmbedding`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from neuronx_distributed.modules.qkv_linear import GQAQKVColumnParallelLinear as NxDGQAQKVColumnParallelLinear
from neuronx_distributed.parallel_layers.layers import ColumnParallelLinear, RowParallelLinear
from peft.tuners.lora import LoraLayer
from torch import nn

from ...deviation_record import note

_SUPPORTED_INITS = (True, False, "gaussian")


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what} is not supported by the reference backend's LoRA layers for NxD parallel linears; "
        "use plain LoRA (init_lora_weights True/False/'gaussian', no DoRA), or merge on the consolidated "
        "transformers model with PEFT."
    )


class _ParallelLoraLayer(nn.Module, LoraLayer):
    """What the three parallel LoRA layers share: PEFT's adapter bookkeeping around a sharded base layer.

    Subclasses say how to build one adapter's (lora_A, lora_B) pair (`_adapter_pair`), how to zero lora_B
    (`_zero_lora_b`) and how to run the layer (`forward`).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        r: int = 0,
        lora_alpha: int = 1,
        lora_dropout: float = 0.0,
        fan_in_fan_out: bool = False,
        init_lora_weights: bool | str = True,
        use_rslora: bool = False,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        if fan_in_fan_out:
            raise ValueError(f"fan_in_fan_out=True does not apply to {type(base_layer).__name__}")
        self._init_adapter_state(base_layer, **kwargs)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            init_lora_weights=init_lora_weights,
            use_rslora=use_rslora,
            use_dora=use_dora,
            lora_bias=lora_bias,
        )

    def _init_adapter_state(self, base_layer: nn.Module, **kwargs: Any) -> None:
        """PEFT's `LoraLayer` attributes, without its type dispatch (which does not know NxD's layers)."""
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.lora_dropout = nn.ModuleDict({})
        self.lora_A = nn.ModuleDict({})
        self.lora_B = nn.ModuleDict({})
        self.lora_embedding_A = nn.ParameterDict({})
        self.lora_embedding_B = nn.ParameterDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.use_dora: dict[str, bool] = {}
        self.lora_bias: dict[str, bool] = {}
        self.lora_magnitude_vector = nn.ModuleDict()
        self._caches: dict[str, Any] = {}
        self.ephemeral_gpu_offload = False
        self.cast_input_dtype_enabled = True
        self.lora_variant: dict[str, Any] = {}
        self.kwargs = kwargs
        self.in_features, self.out_features = self._features(base_layer)

    @staticmethod
    def _features(base_layer: nn.Module) -> tuple[int, Any]:
        return base_layer.input_size, base_layer.output_size

    def _adapter_pair(self, r: int, lora_bias: bool) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def _mark_sequence_parallel_gradients(self, adapter_name: str) -> None:
        """Deviation ON-14: under sequence parallelism the replicated half of the pair (a plain
        `nn.Linear`) sees only this rank's tokens, so its gradient is partial; tagging its parameters
        `sequence_parallel_enabled` makes the training step's sequence-parallel all-reduce sum it over TP."""
        if not getattr(self.get_base_layer(), "sequence_parallel_enabled", False):
            return
        note("ON-14")
        for half in (self.lora_A[adapter_name], self.lora_B[adapter_name]):
            if type(half) is nn.Linear:
                for parameter in half.parameters():
                    parameter.sequence_parallel_enabled = True

    def _zero_lora_b(self, adapter_name: str) -> None:
        """lora_B starts at zero (with its bias, which it has exactly when `lora_bias` is set)."""
        for parameter in self.lora_B[adapter_name].parameters():
            nn.init.zeros_(parameter)

    def update_layer(
        self,
        adapter_name: str,
        r: int,
        lora_alpha: float,
        lora_dropout: float,
        init_lora_weights: bool | str,
        use_rslora: bool,
        use_dora: bool = False,
        lora_bias: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add (or replace) adapter `adapter_name`: its sharded pair, scaling and dropout."""
        if r <= 0:
            raise ValueError(f"`r` should be a positive integer value but the value passed is {r}")
        if use_dora:
            raise _unsupported("DoRA")
        if kwargs.get("use_qalora"):
            raise _unsupported("QALoRA")
        if init_lora_weights not in _SUPPORTED_INITS:
            raise _unsupported(f"init_lora_weights={init_lora_weights!r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.lora_dropout[adapter_name] = nn.Dropout(p=lora_dropout) if lora_dropout > 0.0 else nn.Identity()
        self.lora_A[adapter_name], self.lora_B[adapter_name] = self._adapter_pair(r, lora_bias)
        self._mark_sequence_parallel_gradients(adapter_name)
        self.lora_bias[adapter_name] = lora_bias
        self.scaling[adapter_name] = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.use_dora[adapter_name] = False
        self.reset_lora_parameters(adapter_name, init_lora_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """lora_A drawn like `nn.Linear` (or N(0, 1/r) for "gaussian") on each rank's shard, lora_B zero."""
        if init_lora_weights is False or adapter_name not in self.lora_A:
            return
        lora_a = self.lora_A[adapter_name].weight
        if init_lora_weights is True:
            nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
        else:
            nn.init.normal_(lora_a, std=1 / self.r[adapter_name])
        self._zero_lora_b(adapter_name)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Any = None) -> None:
        reference = next(self.get_base_layer().parameters())
        for container in (self.lora_A, self.lora_B, self.lora_dropout):
            if adapter_name in container:
                container[adapter_name] = container[adapter_name].to(reference.device, dtype=reference.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise _unsupported("Merging LoRA into sharded base weights")

    def unmerge(self) -> None:
        if self.merged:
            raise _unsupported("Unmerging LoRA from sharded base weights")

    def _active_pairs(self) -> list[tuple[nn.Module, nn.Module, nn.Module, float]]:
        if self.disable_adapters:
            return []
        return [
            (self.lora_A[name], self.lora_B[name], self.lora_dropout[name], self.scaling[name])
            for name in self.active_adapters
            if name in self.lora_A
        ]

    def _adapter_outputs(self, x: torch.Tensor) -> Iterator[tuple[Any, float]]:
        """Each active adapter's unscaled `lora_B(lora_A(dropout(x)))`, with its scaling."""
        for lora_a, lora_b, dropout, scaling in self._active_pairs():
            inputs = self._cast_input_dtype(x, lora_a.weight.dtype)
            yield lora_b(lora_a(dropout(inputs))), scaling

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def _sequence_parallel_settings(base: ColumnParallelLinear | RowParallelLinear) -> dict[str, Any]:
    """The sequence-parallel settings and process group a parallel LoRA half copies from its base layer."""
    return {
        "sequence_parallel_enabled": base.sequence_parallel_enabled,
        "sequence_dimension": base.sequence_dimension,
        "tensor_model_parallel_group": base.tensor_parallel_group,
    }


class ParallelLinear(_ParallelLoraLayer):
    """LoRA around a `ColumnParallelLinear` or a `RowParallelLinear` (see the module table)."""

    def _adapter_pair(self, r: int, lora_bias: bool) -> tuple[nn.Module, nn.Module]:
        base = self.get_base_layer()
        if not isinstance(base, (RowParallelLinear, ColumnParallelLinear)):
            raise TypeError(
                f"ParallelLinear wraps NxD's column or row parallel linears, not {type(base).__name__}"
            )
        copied = _sequence_parallel_settings(base)
        if isinstance(base, RowParallelLinear):
            lora_a = RowParallelLinear(
                self.in_features, r, bias=False, input_is_parallel=base.input_is_parallel, **copied
            )
            return lora_a, nn.Linear(r, self.out_features, bias=lora_bias)
        lora_b = ColumnParallelLinear(
            r, self.out_features, bias=lora_bias, gather_output=base.gather_output, **copied
        )
        return nn.Linear(self.in_features, r, bias=False), lora_b

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("Mixed adapter batches are not supported on NxD parallel linears.")
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for delta, scaling in self._adapter_outputs(x):
            result = result + delta * scaling
        return result.to(result_dtype)


class GQAQKVColumnParallelLinear(_ParallelLoraLayer):
    """LoRA around NxD's GQA QKV layer: one replicated lora_A shared by q, k and v, and a lora_B that is
    itself a GQA layer of input size r, so its q/k/v rows follow the base layer's (K/V replicated
    `kv_size_multiplier` times, fused into `weight_qkv` when the base is)."""

    @staticmethod
    def _features(base_layer: nn.Module) -> tuple[int, Any]:
        return base_layer.input_size, list(base_layer.output_sizes)

    def _adapter_pair(self, r: int, lora_bias: bool) -> tuple[nn.Module, nn.Module]:
        base = self.get_base_layer()
        lora_b = NxDGQAQKVColumnParallelLinear(
            r,
            self.out_features,
            bias=lora_bias,
            gather_output=base.gather_output,
            dtype=base.dtype,
            init_method=base.arg_init_method,
            sequence_parallel_enabled=base.sequence_parallel_enabled,
            kv_size_multiplier=base.kv_size_multiplier,
            fuse_qkv=base.fuse_qkv,
        )
        return nn.Linear(self.in_features, r, bias=False), lora_b

    def forward(
        self, x: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.base_layer(x, *args, **kwargs)
        dtype = q.dtype
        for (dq, dk, dv), scaling in self._adapter_outputs(x):
            q, k, v = q + dq * scaling, k + dk * scaling, v + dv * scaling
        return q.to(dtype), k.to(dtype), v.to(dtype)


NEURON_LORA_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    ColumnParallelLinear: ParallelLinear,
    RowParallelLinear: ParallelLinear,
    NxDGQAQKVColumnParallelLinear: GQAQKVColumnParallelLinear,
}
"""Base layer class -> LoRA layer class, registered as PEFT custom modules by `NeuronLoraModel`."""
