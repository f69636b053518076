"""`GQAQKVColumnParallelLinear`: the Q/K/V projection of grouped-query attention when there are fewer KV
heads than TP ranks (or they do not divide evenly), so K/V heads must be replicated across ranks.

Layout (NxD semantics §10.2, tile layout of deviation NXD-11). With T the TP size, m the kv size
multiplier, `q_pp = q_size / T` and `kv_pp = kv_size * m / T`:

- Q is an ordinary column shard: rank r holds master rows `[r*q_pp, (r+1)*q_pp)`. The layer does no
  query-head reordering (optimum-neuron's spec permutes the checkpoint instead).
- K and V masters are tiled, `master.repeat(m, 1)` (`m * kv_size` rows), and rank r holds rows
  `[r*kv_pp, (r+1)*kv_pp)` of the tile, i.e. master row `(r*kv_pp + j) mod kv_size`. The ranks holding
  the same rows form the kv-shared group of `parallel_state` (strided by T/m).

The m copies of a K/V row are one logical parameter. The backward therefore sums the K/V output gradients
over the kv-shared group before forming weight gradients, so every replica receives the gradient of the
shared row and replicas stay equal after an optimizer step. The input gradient divides the (summed) K/V
part by m: each replica contributes `G_shared @ W` to the TP all-reduce, m times over, while the true
contribution of the shared row is `G_shared @ W` once. Equivalently, the result equals
`sum_r (gq_r @ Wq_r + gk_r @ Wk_r + gv_r @ Wv_r)`, the gradient of the dense projection.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...deviation_record import note
from ..parallel_layers import _collectives as comm
from ..parallel_layers import parallel_state
from ..parallel_layers.mappings import gather_from_tensor_model_parallel_region
from ..parallel_layers.sharded_init import (
    InitMethod,
    create_local_weight,
    default_linear_init,
    linear_bias_bound,
)
from ..parallel_layers.utils import divide, set_tensor_model_parallel_attributes


class _GQAQKVLinear(torch.autograd.Function):
    """q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv with NxD's TP/SP/kv-shared gradient reductions.

    Biases may be None. With SP the input is sequence-sharded along dim 0 and all-gathered first.
    """

    @staticmethod
    def forward(
        ctx, x, wq, wk, wv, bq, bk, bv, sequence_parallel, tp_group, kv_group, multiplier, reduce_dtype
    ):
        total = comm.all_gather(x, 0, tp_group) if sequence_parallel else x
        ctx.save_for_backward(total, wq, wk, wv)
        ctx.sequence_parallel, ctx.tp_group, ctx.kv_group = sequence_parallel, tp_group, kv_group
        ctx.multiplier, ctx.reduce_dtype = multiplier, reduce_dtype
        ctx.has_bias = (bq is not None, bk is not None, bv is not None)
        outputs = []
        for weight, bias in ((wq, bq), (wk, bk), (wv, bv)):
            out = torch.matmul(total, weight.t())
            outputs.append(out if bias is None else out + bias)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, gq, gk, gv):
        total, wq, wk, wv = ctx.saved_tensors
        m = ctx.multiplier
        if m > 1 or ctx.sequence_parallel:
            note("NXD-12")  # NxD runs these reductions with XLA-only collectives
        if 1 < m < parallel_state.get_tensor_model_parallel_size():
            # The kv-shared groups match the tile layout; TRN2 groups adjacent ranks instead (with m == T both
            # platforms form one group of every rank)
            note("NXD-11")
        if m > 1:
            # The m replicas of a K/V row are one parameter: they all get the summed gradient.
            gk = comm.all_reduce(gk.to(ctx.reduce_dtype), ctx.kv_group).to(gk.dtype)
            gv = comm.all_reduce(gv.to(ctx.reduce_dtype), ctx.kv_group).to(gv.dtype)

        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = gq.matmul(wq) + (gk.matmul(wk) + gv.matmul(wv)) / m
            if comm.group_size(ctx.tp_group) > 1:
                dtype = grad_input.dtype
                reduced = grad_input.to(ctx.reduce_dtype)
                if ctx.sequence_parallel:
                    reduced = comm.reduce_scatter(reduced, 0, ctx.tp_group)
                else:
                    reduced = comm.all_reduce(reduced, ctx.tp_group)
                grad_input = reduced.to(dtype)

        x2d = total.reshape(-1, total.shape[-1])
        grads_w, grads_b = [], []
        for i, g in enumerate((gq, gk, gv)):
            g2d = g.reshape(-1, g.shape[-1])
            grads_w.append(g2d.t().matmul(x2d) if ctx.needs_input_grad[1 + i] else None)
            grads_b.append(g2d.sum(0) if ctx.has_bias[i] and ctx.needs_input_grad[4 + i] else None)
        return (grad_input, *grads_w, *grads_b, None, None, None, None, None)


class _TieReplicas(torch.autograd.Function):
    """Identity forward; the backward gives each of the m tiled copies the sum of their gradients.

    Used for the full (replicated, `gather_output=True`) K/V bias, whose m blocks are copies of one bias.
    """

    @staticmethod
    def forward(ctx, bias, multiplier):
        ctx.multiplier = multiplier
        return bias.view_as(bias)

    @staticmethod
    def backward(ctx, grad):
        m = ctx.multiplier
        summed = grad.reshape(m, -1).sum(0)
        return summed.repeat(m), None


class GQAQKVColumnParallelLinear(nn.Module):
    """Q/K/V projections of GQA attention, K/V heads replicated `kv_size_multiplier` times across TP ranks.

    `output_sizes = [q_size, kv_size]` (global, before replication). `forward(input)` returns the tuple
    `(q, k, v)`: local widths `(q_pp, kv_pp, kv_pp)`, or with `gather_output` the gathered widths
    `(q_size, m*kv_size, m*kv_size)` (replicated heads included). With `sequence_parallel_enabled` the
    input is `(S/T, B, H)` sequence-first and the outputs `(S, B, .)`.

    Differences from NxD 0.18 (see `deviations.py`): biases work (NXD-09), the fused `weight_qkv` keeps its
    tensor-parallel attributes (NXD-10), K/V always use the tile layout (NXD-11), the backward runs on
    torch.distributed (NXD-12), and `keep_master_weight` keeps plain tensors, never parameters (NXD-04).
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        bias: bool = True,
        gather_output: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        init_method: InitMethod | None = None,
        sequence_parallel_enabled: bool = False,
        keep_master_weight: bool = False,
        kv_size_multiplier: int = 1,
        fuse_qkv: bool = True,
        reduce_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        q_size, kv_size = output_sizes
        world = parallel_state.get_tensor_model_parallel_size()
        m = kv_size_multiplier
        if world % m != 0:
            raise AssertionError(f"kv_size_multiplier ({m}) must divide the tensor parallel size ({world})")
        if (kv_size * m) % world != 0:
            raise AssertionError(
                f"kv_size x kv_size_multiplier ({kv_size} x {m}) must be divisible by the tensor parallel "
                f"size ({world}); choose kv_size_multiplier so that every rank holds whole K/V rows"
            )
        self.input_size = input_size
        self.output_sizes = list(output_sizes)
        # optimum-neuron's LoRA wrapper builds its lora_B from these (dtype, arg_init_method, ...).
        self.dtype = dtype
        self.arg_init_method = init_method
        self.use_bias = bias
        self.gather_output = gather_output
        self.sequence_parallel_enabled = sequence_parallel_enabled
        self.kv_size_multiplier = m
        self.fuse_qkv = fuse_qkv
        self.reduce_dtype = reduce_dtype
        self.keep_master_weight = keep_master_weight
        self.tensor_parallel_size = world
        self.q_output_size_per_partition = divide(q_size, world)
        self.kv_output_size_per_partition = divide(kv_size * m, world)
        self.async_tensor_model_parallel_allreduce = not sequence_parallel_enabled and world > 1
        parallel_state.initialize_kv_group(m)
        if m > 1:
            # K/V replicas initialised in the TRN1 tile layout, whatever the platform (TRN2 repeats rows)
            note("NXD-11", random_init_only=True)
        if fuse_qkv:
            note("NXD-10")  # weight_qkv keeps its tensor-parallel attributes
        if bias:
            note("NXD-09")  # the released layer cannot hold q/k/v biases

        q_pp, kv_pp = self.q_output_size_per_partition, self.kv_output_size_per_partition
        rows = (q_pp, kv_pp, kv_pp)
        # A gathered output is replicated on every rank, so is the bias added to it (full widths, no TP tag).
        bias_rows = (q_size, kv_size * m, kv_size * m) if gather_output else rows
        device = torch.device(device) if device is not None else None

        def empty(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dtype, device=device))

        if fuse_qkv:
            self.weight_qkv = empty(sum(rows), input_size)
            weights = [self.weight_qkv]
            self.register_parameter("bias_qkv", empty(sum(bias_rows)) if bias else None)
            for name in ("bias_q", "bias_k", "bias_v"):
                self.register_parameter(name, None)
            biases = [self.bias_qkv] if bias else []
        else:
            self.weight_q, self.weight_k, self.weight_v = (empty(n, input_size) for n in rows)
            weights = [self.weight_q, self.weight_k, self.weight_v]
            for name, n in zip(("bias_q", "bias_k", "bias_v"), bias_rows):
                self.register_parameter(name, empty(n) if bias else None)
            biases = [self.bias_q, self.bias_k, self.bias_v] if bias else []
        # Every weight (fused too, deviation NXD-10) is a row shard; so are the local biases. The full bias
        # of a gathered output is replicated and, like ColumnParallelLinear's, carries no TP attributes.
        for tensor in weights + ([] if gather_output else biases):
            set_tensor_model_parallel_attributes(tensor, True, 0, 1, num_partitions=world)

        self.master_weight_qkv = None
        self.master_weight_q = self.master_weight_k = self.master_weight_v = None
        if device is None or device.type != "meta":
            self._initialize(init_method or default_linear_init, q_size, kv_size)

    def _initialize(self, init_method: InitMethod, q_size: int, kv_size: int) -> None:
        """fp32 masters Q, K, V (then biases Q, K, V) from the default RNG, replicated and sliced."""
        m, dtype = self.kv_size_multiplier, self.dtype
        masters = []
        with torch.no_grad():
            for rows in (q_size, kv_size, kv_size):
                master = torch.empty(rows, self.input_size, dtype=torch.float32)
                init_method(master)
                masters.append(master)
            bound = linear_bias_bound(self.input_size)
            bias_masters = (
                [torch.empty(n).uniform_(-bound, bound) for n in (q_size, kv_size, kv_size)]
                if self.use_bias
                else []
            )

        q_pp, kv_pp = self.q_output_size_per_partition, self.kv_output_size_per_partition
        replicas = (1, m, m)
        local_w = [
            create_local_weight(master.repeat(r, 1).to(dtype), 0, pp, 1)
            for master, r, pp in zip(masters, replicas, (q_pp, kv_pp, kv_pp))
        ]
        if self.gather_output:
            local_b = [b.repeat(r).to(dtype) for b, r in zip(bias_masters, replicas)]
        else:
            local_b = [
                create_local_weight(b.repeat(r).to(dtype), 0, pp, 1)
                for b, r, pp in zip(bias_masters, replicas, (q_pp, kv_pp, kv_pp))
            ]
        with torch.no_grad():
            if self.fuse_qkv:
                self.weight_qkv.copy_(torch.cat(local_w, dim=0))
                if self.use_bias:
                    self.bias_qkv.copy_(torch.cat(local_b, dim=0))
            else:
                for param, value in zip((self.weight_q, self.weight_k, self.weight_v), local_w):
                    param.copy_(value)
                if self.use_bias:
                    for param, value in zip((self.bias_q, self.bias_k, self.bias_v), local_b):
                        param.copy_(value)
        if self.keep_master_weight:
            # Plain tensors, never registered as parameters (deviation NXD-04).
            if self.fuse_qkv:
                self.master_weight_qkv = torch.cat(masters, dim=0).to(dtype)
            else:
                self.master_weight_q, self.master_weight_k, self.master_weight_v = (
                    w.to(dtype) for w in masters
                )

    def _split_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.fuse_qkv:
            return self.weight_q, self.weight_k, self.weight_v
        q_pp, kv_pp = self.q_output_size_per_partition, self.kv_output_size_per_partition
        return tuple(torch.split(self.weight_qkv, [q_pp, kv_pp, kv_pp], dim=0))

    def _split_biases(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        if not self.use_bias:
            return None, None, None
        if not self.fuse_qkv:
            return self.bias_q, self.bias_k, self.bias_v
        if self.gather_output:
            q_size, kv_size = self.output_sizes
            sizes = [q_size, kv_size * self.kv_size_multiplier, kv_size * self.kv_size_multiplier]
        else:
            kv_pp = self.kv_output_size_per_partition
            sizes = [self.q_output_size_per_partition, kv_pp, kv_pp]
        return tuple(torch.split(self.bias_qkv, sizes, dim=0))

    def forward(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.gather_output and self.sequence_parallel_enabled:
            raise AssertionError("gather_output=True is not supported together with sequence parallelism")
        tp_group = parallel_state.get_tensor_model_parallel_group()
        m = self.kv_size_multiplier
        kv_group = parallel_state.get_kv_shared_group() if m > 1 else None
        wq, wk, wv = self._split_weights()
        bq, bk, bv = self._split_biases()
        local_bias = (None, None, None) if self.gather_output else (bq, bk, bv)
        q, k, v = _GQAQKVLinear.apply(
            input,
            wq,
            wk,
            wv,
            *local_bias,
            self.sequence_parallel_enabled,
            tp_group,
            kv_group,
            m,
            self.reduce_dtype,
        )
        if not self.gather_output:
            return q, k, v
        q, k, v = (gather_from_tensor_model_parallel_region(t) for t in (q, k, v))
        if self.use_bias:
            q = q + bq
            k = k + (_TieReplicas.apply(bk, m) if m > 1 else bk)
            v = v + (_TieReplicas.apply(bv, m) if m > 1 else bv)
        return q, k, v

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, output_sizes={self.output_sizes}, bias={self.use_bias}, "
            f"gather_output={self.gather_output}, kv_size_multiplier={self.kv_size_multiplier}, "
            f"fuse_qkv={self.fuse_qkv}, sequence_parallel_enabled={self.sequence_parallel_enabled}"
        )
