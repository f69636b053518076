"""Every place where the reference backend deliberately differs from the released Neuron stack.

The reference backend reproduces neuronx-distributed (NxD) and optimum-neuron's training host faithfully,
except where the real code has a bug or a surprise that would make a conformance verdict wrong. There it
does the right thing, and the difference is listed here exactly once, with a stable id. Reports cite these
ids when a check touches one, and `docs/backend-deviations.md` is rendered from this table (a test keeps the
two in sync: `python -m conformance.backends.reference.deviations > docs/backend-deviations.md`).

Sources: `neuronx-distributed-semantics.md` (NxD 0.18 snapshot) and `optimum-neuron-training-semantics.md`
(optimum-neuron 0.4.x) in the project's shared reference folder; section numbers point into them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    """One intended difference between the reference backend and the real package."""

    id: str
    component: str
    upstream: str
    reference: str
    trainium_impact: str
    source: str
    carries_over: bool = True
    """Whether a check that passes while touching this deviation passes on Trainium as it is. False where the
    model would train, load or fail differently there: such a pass is a WARN whose reason is the Trainium
    impact. True where only file layouts, rank pairing, random init or warnings change."""
    differs_on: tuple[str, ...] = ()
    """Platforms on which a pass does not carry over although `carries_over` is True: the released code
    behaves differently on them only (NXD-11: TRN2's kv-shared groups)."""

    def carries_over_on(self, platform: str) -> bool:
        """Whether a pass that touched this deviation holds on `platform` (`PLATFORMS`) as it is."""
        if platform not in PLATFORMS:
            raise ValueError(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
        return self.carries_over and platform not in self.differs_on


PLATFORMS = ("trn1", "trn2")
"""The Trainium generations a verdict can be asked for (`--platform`)."""

DEFAULT_PLATFORM = "trn1"
"""optimum-neuron's training documentation, tutorials and tests target trn1.32xlarge, and the package itself
sets the compilation target to trn1 on a machine without Neuron devices: verdicts are for TRN1 unless
`--platform trn2` asks otherwise."""


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        "NXD-01",
        "parallel_state",
        "On TRN1 with TP=4 the TP groups are strided by LOCAL_WORLD_SIZE/4 ([0,2,4,6], [1,3,5,7] for 8 ranks).",
        "TP groups are always contiguous (the TRN2 / LOGIC1 layout), whatever the TP size.",
        "Only which global ranks pair up; tensors and results are the same.",
        "NxD §2.1.5, §18.1",
    ),
    Deviation(
        "NXD-02",
        "parallel_state",
        "get_tensor_model_parallel_src_rank (TP=4) and get_data_parallel_src_rank (PP>1) can name a rank "
        "outside the caller's group.",
        "Both return the first member of the caller's group.",
        "None for models; only code that broadcasts from the source rank.",
        "NxD §2.2, §18.13",
    ),
    Deviation(
        "NXD-03",
        "layers",
        "ColumnParallelLinear(gather_output=False) initialises its bias per rank from the default RNG, so every "
        "rank holds the same values instead of a slice; RowParallelLinear draws its bias with bound "
        "1/sqrt(in/T) instead of 1/sqrt(in).",
        "Biases are drawn on the full master (nn.Linear's bound 1/sqrt(in)) and then sliced, so a seeded "
        "init is independent of the TP size.",
        "Only random initialisation (from_config); from_pretrained loads the checkpoint's biases.",
        "NxD §4, §5, §18.3",
    ),
    Deviation(
        "NXD-04",
        "layers",
        "keep_master_weight=True in fp32 registers `master_weight` (and GQA `master_weight_q/k/v`) as "
        "parameters, so they appear in state_dict().",
        "The master copy is kept as a plain tensor attribute, never a parameter.",
        "Checkpoints of layers built with keep_master_weight=True carry extra keys on Trainium.",
        "NxD §3.3, §18.4",
    ),
    Deviation(
        "NXD-05",
        "layers",
        "ParallelEmbedding drops padding_idx=0 (and any falsy value) and never zeroes the padding row; a "
        "non-fp32 embedding's masked output is forced to bf16.",
        "padding_idx is honoured for every value as nn.Embedding does: the padding row starts at zero and "
        "gets no gradient; the output keeps the parameter dtype.",
        "With pad_token_id=0 the padding row receives gradient on Trainium; fp16 embeddings return bf16.",
        "NxD §6, §18.6",
        carries_over=False,
    ),
    Deviation(
        "NXD-06",
        "layers",
        "ParallelEmbedding with sequence parallelism and a truthy sequence_dimension returns the un-reduced "
        "partial sum.",
        "The partial is reduce-scattered along the requested sequence dimension.",
        "Only for callers passing sequence_dimension=1; generated models use the sequence-first layout (0).",
        "NxD §6, §18.7",
    ),
    Deviation(
        "NXD-07",
        "layers",
        "ColumnParallelLinear's asynchronous input-gradient all-reduce is thrown away when the gradient dtype "
        "differs from reduce_dtype (bf16 parameters with the default fp32 reduce_dtype).",
        "The reduced gradient is always returned, cast back to the gradient's dtype.",
        "bf16 training without sequence parallelism: on Trainium the input gradients of column layers "
        "are un-reduced. fp32 parity checks are unaffected.",
        "NxD §7, §18.8",
        carries_over=False,
    ),
    Deviation(
        "NXD-08",
        "mappings",
        "reduce_from_tensor_model_parallel_region and the comm all-reduce work in place on their input in "
        "CPU mode; so does the CPU-mode reduce-scatter on a contiguous input (the forward of "
        "reduce_scatter_to_sequence_parallel_region) and on the upstream gradient (the backward of "
        "gather_from_sequence_parallel_region), since `x.contiguous()` is `x` itself.",
        "Collectives never modify the caller's tensor.",
        "None on XLA devices (functional there), and no effect on model results: no model reads the "
        "reduced input again.",
        "NxD §8, §9, §18.9; parallel_layers/comm.py cpu_reduce_scatter, mappings.py _reduce_scatter_along_dim",
    ),
    Deviation(
        "NXD-09",
        "modules.qkv_linear",
        "GQAQKVColumnParallelLinear(bias=True) raises TypeError in the released code.",
        "Biases work: each of q/k/v gets a bias laid out like its weight rows (K/V tiled by the kv size "
        "multiplier).",
        "A model with attention biases that needs the GQA layer (kv heads < TP) cannot be built on Trainium "
        "with NxD 0.18; the report flags it.",
        "NxD §10.3, §18.10",
        carries_over=False,
    ),
    Deviation(
        "NXD-10",
        "modules.qkv_linear",
        "The fused `weight_qkv` parameter is rebuilt after init and loses its tensor-parallel attributes.",
        "`weight_qkv` carries tensor_model_parallel=True, partition_dim=0, partition_stride=1.",
        "On Trainium clip_grad_norm counts weight_qkv as a replicated parameter (its norm is divided by T) "
        "and the checkpoint metadata marks it non-parallel (consolidation hard-codes dim 0 and still works).",
        "NxD §10.2, §18.10",
    ),
    Deviation(
        "NXD-11",
        "modules.qkv_linear",
        "GQAQKVColumnParallelLinear's K/V layout depends on the platform. TRN1 tiles the K/V masters "
        "(repeat(m, 1)) and all-reduces the K/V gradients over strided kv-shared groups ([[0,2],[1,3]] at "
        "T=4, m=2), the ranks that hold the same rows of the tile. TRN2 repeats rows (repeat_interleave, not "
        "head-aligned when head_dim > 1) and builds adjacent groups ([[0,1],[2,3]]); optimum-neuron's "
        "GQAQKVColumnParallelLinearSpec always loads the tile layout, so on TRN2 each group holds different "
        "K/V heads.",
        "Always the TRN1 layout: tiled K/V and the matching strided kv-shared groups, on every platform.",
        "TRN1: none, the layouts are the same. TRN2 with kv_size_multiplier m > 1: after from_pretrained, "
        "when m < T the K/V output gradients of different heads are summed together, so the K/V weight "
        "gradients and the input gradients of the attention are wrong (forward and Q gradients are right); "
        "after from_config, the K/V replicas hold different rows on different ranks, so the trained model "
        "is not a GQA model and consolidation (which keeps the first replica) does not give what was trained.",
        "NxD §10.2, §10.4, §18.10; differential run on NxD 0.18 (tools/nxd-differential, *_trn2 runs)",
        differs_on=("trn2",),
    ),
    Deviation(
        "NXD-12",
        "modules.qkv_linear",
        "The GQA backward for kv_size_multiplier > 1 or sequence parallelism uses XLA-only collectives.",
        "The same reductions run on torch.distributed (all-reduce over the kv-shared group, reduce-scatter "
        "over TP).",
        "None: same mathematics.",
        "NxD §10.5, §18.10",
    ),
    Deviation(
        "NXD-13",
        "loss_functions",
        "parallel_cross_entropy subtracts the max from its input in place. With label smoothing a, at every "
        "TP size (T=1 included), the forward spreads a over the K-1 non-target classes (NeMo's convention: "
        "s = a*K/(K-1), loss = (1-s)*nll - s*mean(log p)) instead of torch's a/K on every class, with K the "
        "local vocabulary and the mean over the local shard only, so at T > 1 each rank computes a different "
        "loss; the backward is not the gradient of that forward: it gives softmax - s/K, dropping the -(1-s) at "
        "the target (its mask is inverted: it subtracts (1-s) at local index 0 on the ranks that do not hold "
        "the target).",
        "The input is left untouched; label smoothing matches F.cross_entropy(label_smoothing=a) on the full "
        "vocabulary, values and gradients.",
        "Any use of label_smoothing > 0 trains differently on Trainium, at every TP size: the gradient no longer "
        "pulls the target logit up (only the uniform -s/K remains), so the model does not learn the labels.",
        "NxD §11.1, §18.11; parallel_layers/loss_functions.py _ParallelCrossEntropy (NxD 0.18, fbac349b); "
        "differential run (w2_tp1_dp2)",
        carries_over=False,
    ),
    Deviation(
        "NXD-14",
        "grads",
        "clip_grad_norm(norm_type=inf) raises AttributeError.",
        "The infinity norm works (max over all shards).",
        "Only callers asking for the infinity norm.",
        "NxD §12.2, §18.12",
    ),
    Deviation(
        "NXD-15",
        "layers",
        "A stride > 1 layer with gather_output=True returns its columns in per-rank interleaved order.",
        "The gathered output is in the master weight's column order.",
        "Only stride > 1 layers that gather their output; generated models never gather fused layers.",
        "NxD §4, §18.14",
    ),
    Deviation(
        "NXD-16",
        "layers",
        "create_local_weight with stride 1 on float8 tensors returns a view and leaves out_weight unwritten.",
        "out_weight is always written.",
        "Only float8 CPU initialisation.",
        "NxD §3.2",
    ),
    Deviation(
        "NXD-17",
        "layers",
        "SPMDRank.rank starts at 0 and expects the checkpoint to carry arange(T).",
        "SPMDRank.rank starts at the process's TP rank.",
        "None for training: use_spmd_rank is an inference feature.",
        "NxD §6, §14.3",
    ),
    Deviation(
        "NXD-18",
        "kernels.flash_attn",
        "With mixed_precision=True the NKI flash kernel runs its matmuls in bf16 with fp32 accumulation, and "
        "dropout draws from the kernel's own RNG.",
        "Softmax and matmuls run in fp32 with torch; dropout draws from torch's RNG. The kernel's S % 2048 "
        "requirement is enforced unless NXD_REFERENCE_FLASH_ATTN_SEQ_MULTIPLE lowers it for tiny models.",
        "The flash path agrees with fp32 eager attention only to bf16 precision on Trainium: flash parity "
        "tolerances must be bf16-sized there.",
        "NxD kernels/flash_attn.py",
    ),
    Deviation(
        "NXD-19",
        "trainer",
        "trainer.save_checkpoint writes torch-xla's serialized format (reference files plus `.tensors` "
        "folders) with use_xser=True and saves in a background thread with async_save=True; it also saves "
        "schedulers, user content, ZeRO-1 optimizer shards and rotates old checkpoints.",
        "Always plain torch.save files of the same layout and names, written synchronously; the other options "
        "raise NotImplementedError. The pipeline package's names exist for import only: pipeline "
        "parallelism raises NotImplementedError.",
        "File format only: optimum-neuron's consolidation reads both formats and gives the same tensors.",
        "NxD trainer/checkpoint.py save_checkpoint (0.18); optimum-neuron 0.4.5 modeling_utils.save_pretrained",
    ),
    Deviation(
        "ON-01",
        "transformations_utils",
        "FusedLinearsSpec's LoRA consolidation for row fusions (fuse_axis=1) always raises ValueError, and the "
        "row-fusion LoRA load concatenates lora_B without sharding it.",
        "Row fusions load and consolidate LoRA adapters symmetrically with column fusions.",
        "None for shipped and generated models: all fusions are column fusions.",
        "optimum-neuron §2.5(c,d), §8.1",
    ),
    Deviation(
        "ON-02",
        "transformations_utils",
        "With the GQA layer, fuse_qkv and LoRA, loading writes `qkv_proj.lora_B.weight` although the "
        "parameter is `qkv_proj.lora_B.<adapter>.weight_qkv`.",
        "The fused lora_B is written under the parameter's own name (`lora_B.weight_qkv`).",
        "LoRA + GQA + fuse_qkv adapters may not load their lora_B on Trainium.",
        "optimum-neuron §2.6(c), §8.2",
        carries_over=False,
    ),
    Deviation(
        "ON-03",
        "transformations_utils",
        "GQAQKVColumnParallelLinearSpec pops q/k/v without waiting for every part, so a multi-file checkpoint "
        "that splits a layer's projections raises KeyError; FusedLinearsSpec waits, but for one fused "
        "parameter at a time.",
        "Both specs keep incomplete groups pending across checkpoint files, any number at a time, and raise "
        "only if parts are still missing after the last file.",
        "Sharded HF checkpoints that split a layer across files fail to load on Trainium.",
        "optimum-neuron §2.5(a), §2.6(a), §8.3",
        carries_over=False,
    ),
    Deviation(
        "ON-04",
        "checkpointing",
        "Consolidation shards the output with a file name that has no {suffix}, so a model over 5 GB keeps "
        "only its last shard.",
        "Sharded output files are numbered and indexed as transformers does; the consolidation function takes "
        "an extra `max_shard_size` (default 5 GB, the release's fixed size) so that tests can shard small models.",
        "Consolidating models over 5 GB loses tensors on Trainium.",
        "optimum-neuron §3.4, §8.5",
        carries_over=False,
    ),
    Deviation(
        "ON-05",
        "transformations_utils",
        "create_local_weight_with_padding never pads: an uneven dimension gives the last rank a shorter shard.",
        "An uneven dimension is an error that names the parameter and the sizes.",
        "The same configuration fails later, with a shape mismatch, on Trainium.",
        "optimum-neuron §2.1, §8.11",
        carries_over=False,
    ),
    Deviation(
        "ON-06",
        "transformations_utils",
        "adapt_peft_config with target_modules='all-linear' calls .remove on a string.",
        "'all-linear' is expanded to the concrete module names before fusing.",
        "LoRA with target_modules='all-linear' fails on Trainium.",
        "optimum-neuron §2.5, §8.15",
        carries_over=False,
    ),
    Deviation(
        "ON-07",
        "loss_utils",
        "ForCausalLMLoss ignores num_items_in_batch (transformers divides by it under gradient accumulation).",
        "num_items_in_batch is honoured as in transformers.",
        "Loss scale under gradient accumulation differs from transformers on Trainium.",
        "optimum-neuron §5.1, §8.10",
        carries_over=False,
    ),
    Deviation(
        "ON-08",
        "config",
        "TrainingNeuronConfig silently replaces the requested TP/PP sizes by those of an already initialised "
        "parallel state.",
        "A requested size that differs from the initialised one is a ValueError naming both.",
        "None when the sizes agree.",
        "optimum-neuron §1",
    ),
    Deviation(
        "ON-09",
        "masking_utils",
        "The eager attention's recomputed causal mask is created on device='xla'.",
        "The mask is created on the device of the attention scores.",
        "None: device placement only.",
        "optimum-neuron §5.1",
    ),
    Deviation(
        "ON-10",
        "transformations_utils",
        "GQAQKVColumnParallelLinearSpec with bias=True fails on load: it views the 1-D bias as a 3-D tensor.",
        "q/k/v biases follow their weight rows (query permutation, K/V tiling); o_proj's replicated bias is "
        "left as is.",
        "A model with attention biases that needs the GQA layer cannot load on Trainium.",
        "optimum-neuron §2.6(a)",
        carries_over=False,
    ),
    Deviation(
        "ON-11",
        "modeling_utils",
        "use_xser=True (the default) writes torch-xla's reference files plus `.tensors` folders; async_save "
        "saves asynchronously.",
        "Shards are plain torch.save files (with a one-time warning when use_xser=True), saved synchronously; "
        "consolidation reads both formats.",
        "File layout only: consolidation gives the same tensors.",
        "optimum-neuron §3.3",
    ),
    Deviation(
        "ON-12",
        "loss_utils",
        "The host's _ParallelCrossEntropy (a copy of NxD's with ignore_index and reduction) subtracts the max "
        "from its input in place, and its label smoothing is NxD's (NXD-13): the K/(K-1) convention over the "
        "local vocabulary and a local mean in the forward, at every TP size, and a backward that is not the "
        "gradient of that forward.",
        "The input is left untouched; label smoothing equals F.cross_entropy(label_smoothing=a) over the full "
        "vocabulary, values and gradients.",
        "Label smoothing through the host's parallel_cross_entropy trains differently on Trainium at every TP "
        "size (ForCausalLMLoss never passes it).",
        "optimum-neuron §5.1; 0.4.5 loss_utils.py _ParallelCrossEntropy",
        carries_over=False,
    ),
    Deviation(
        "ON-13",
        "modeling_utils",
        "from_pretrained computes missing/unexpected keys from a meta-device transformers model, and leaves a "
        "ParallelEmbedding or GQA layer that the checkpoint does not cover uninitialised.",
        "Keys are reported under the model's own parameter names; an uncovered ParallelEmbedding is "
        "initialised, an uncovered GQA layer is warned about.",
        "Warning text and output_loading_info only; weights are identical for complete checkpoints.",
        "optimum-neuron §3.2",
    ),
    Deviation(
        "ON-14",
        "peft (LoRA layers)",
        "With sequence parallelism, the replicated half of a LoRA pair (lora_A of a column-parallel or GQA "
        "base, lora_B of a row-parallel base: a plain nn.Linear) sees only its rank's sequence shard, so "
        "its gradient is partial, and it is not tagged sequence_parallel_enabled, so the optimizer's "
        "sequence-parallel all-reduce skips it (read from optimum-neuron 0.4.5, not run).",
        "Those parameters are tagged sequence_parallel_enabled, so the sequence-parallel all-reduce sums "
        "their gradient over TP, as it does for norm weights.",
        "LoRA training with sequence parallelism: the replicated LoRA halves would get partial gradients and "
        "drift apart across TP ranks on Trainium.",
        "optimum-neuron peft/tuners/lora/layer.py (0.4.5); accelerate/optimizer.py",
        carries_over=False,
    ),
    Deviation(
        "ON-15",
        "modeling_utils (resize_token_embeddings)",
        "At TP > 1 the resized ParallelEmbedding and ColumnParallelLinear lm_head keep each rank's first "
        "min(old, new)/T local rows, so existing tokens change rows (growing 64 -> 80 at T=2: old rows 32..63 "
        "become ids 40..71, ids 32..39 get new rows; shrinking drops rows on every rank); new rows are drawn "
        "per rank from that rank's RNG; the padding row's local index is passed on as a global one, so the "
        "padding row is usually lost (run on the reference layers, T=2).",
        "Global row i of the embedding and of the lm_head is the old row i for every i below both sizes (the "
        "old table is gathered over TP); new rows come from the model's _init_weights, drawn as at T=1 and "
        "broadcast from the first TP rank, so they do not depend on T; the padding row keeps its global "
        "index.",
        "After resize_token_embeddings at TP > 1, existing tokens read other tokens' embeddings and lm_head "
        "rows: training starts from a scrambled vocabulary, and the padding row receives gradient.",
        "optimum-neuron 0.4.5 modeling_utils.py, NeuronModelMixin._get_resized_parallel_embeddings and "
        "_get_resized_parallel_lm_head",
        carries_over=False,
    ),
    Deviation(
        "ON-16",
        "modeling_utils (resize_token_embeddings)",
        "resize_token_embeddings sets the model's vocab_size to the global size, even when nothing is "
        "resized; Llama and Qwen3 keep the per-rank size there for the loss's view(-1, vocab_size) of the "
        "local logits. With pad_to_multiple_of, transformers passes the embedding's local row count as the "
        "lm_head's new size, so at T > 1 the lm_head gets (padded V)/T outputs while the embedding has padded "
        "V rows (run on the reference layers, T=2).",
        "A vocab_size attribute that held the per-rank size keeps the per-rank size (new size / T); the "
        "lm_head is resized to the embedding's global size; config.vocab_size is the new global size in "
        "both.",
        "After resize_token_embeddings at TP > 1 the Llama/Qwen3 loss fails (its view of the logits no longer "
        "matches the labels); with pad_to_multiple_of the lm_head and the embedding disagree in size.",
        "optimum-neuron §8 item 16; 0.4.5 NeuronModelMixin.resize_token_embeddings; transformers 4.57 "
        "PreTrainedModel._resize_token_embeddings",
        carries_over=False,
    ),
    Deviation(
        "NXD-20",
        "modules.moe (expert parallelism)",
        "With EP > 1 the MoE layer reduces the experts' output over the world group (all-reduce, or "
        "reduce-scatter with SP), the router gathers SP logits over the world group, and the TP all-reduce of "
        "the affinity gradient is skipped: the forward treats every rank as holding the same tokens. The "
        "gradient reduction (grads.bucket_allreduce_gradients, as optimum-neuron's optimizer calls it), the "
        "capacity path's all-to-all and optimum-neuron's data sharding by DP rank treat EP ranks as "
        "data-parallel ranks with their own tokens (read, not run).",
        "EP ranks are data-parallel ranks with their own tokens throughout: the experts exchange token slots "
        "by all-to-all over the EP group (gloo's all_to_all_single), and the router, the SP gather / "
        "reduce-scatter, the affinity-gradient all-reduce and the output reduction all stay on the TP group. "
        "Each rank's output equals the dense MoE on its batch, and after the optimizer's reductions every "
        "gradient equals the dense one.",
        "MoE training with EP > 1 through NxD's MoE layer mixes the outputs of different batches on Trainium "
        "(and, where tokens are replicated, expert gradients come out 1/EP too small): an EP > 1 result here "
        "does not carry over.",
        "NxD modules/moe/model.py:206-245, routing.py:66-70, experts.py:182-213, parallel_layers/grads.py:259; "
        "optimum-neuron 0.4.5 accelerate/optimizer.py:126-129",
        carries_over=False,
    ),
    Deviation(
        "NXD-21",
        "modules.moe (expert parallelism)",
        "Experts exchange tokens over EP only in training: in evaluation an EP > 1 layer multiplies all E "
        "experts' slots with its E/EP local weights and fails. forward_all_experts (capacity_factor=None, and "
        "the CPU fallback of the blockwise path) all-to-alls a (1, T, H) tensor whose dim 0 cannot be split "
        "over EP. ExpertMLPs with EP > 1 needs enable_spmd_rank=True, else AttributeError (spmd_rank).",
        "The exchange runs in training and evaluation; a shared (1, T, H) input is expanded to every expert "
        "first, so dropless routing works with EP; enable_spmd_rank is optional.",
        "Dropless MoE training (capacity_factor=None) and any evaluation with EP > 1 fail on Trainium unless "
        "the blockwise NKI kernel path is taken (capacity_factor <= 0 with a SiLU GLU on trn2).",
        "NxD modules/moe/experts.py:182, expert_mlps_v2.py:133-138, 366-392",
        carries_over=False,
    ),
    Deviation(
        "NXD-22",
        "modules.moe (kernels)",
        "capacity_factor <= 0 selects the blockwise NKI matmul (bf16 kernels, its own summation order); "
        "without it training falls back to forward_all_experts, but with an activation other than SiLU or "
        "glu_mlp=False it runs the capacity path with that factor: capacity 0, every routed token dropped. "
        "Evaluation picks selective loading, all experts or a blockwise path by token count. "
        "DEFAULT_LNC_SIZE follows the platform.",
        "Every dropless path (capacity_factor None or <= 0, training and evaluation) is forward_all_experts "
        "in the parameters' dtype; the kernel arguments are stored and ignored; logical_nc_config defaults "
        "to 1.",
        "Same routing and the same sums; on Trainium the blockwise kernel's numerics differ, so dropless MoE "
        "parity needs bf16-sized tolerances there. A non-SiLU or non-GLU MoE with capacity_factor <= 0 "
        "loses its routed experts on Trainium: use capacity_factor=None for those.",
        "NxD modules/moe/expert_mlps_v2.py:484-593, 691-916, 1407-1499; model_utils.py:96",
    ),
    Deviation(
        "NXD-23",
        "modules.moe (not provided)",
        "NxD also offers expert biases (the down-projection bias is added on every TP rank before the "
        "reduction), clamped gate/up projections, early_expert_affinity_modulation, uneven or redundant "
        "expert_distribution, hybrid sharding, token shuffling, SharedExperts with replicated (SP) or "
        "transposed weights, the fused token-generation module, and GroupLimitedRouter (which reads an "
        "e_score_correction_bias it never defines).",
        "Asking for any of them raises NotImplementedError naming the feature; GroupLimitedRouter, "
        "token_shuffling and the kernel modules are absent.",
        "None for models that do not use them; a model that needs one (gpt-oss-style biases and clamps, "
        "DeepSeek-V3 routing, Llama 4's early modulation) cannot be checked on the reference backend.",
        "NxD modules/moe/ (moe_parallel_layers.py, experts.py, expert_mlps_v2.py, routing.py:316-404, "
        "shared_experts.py, token_shuffling.py)",
    ),
    Deviation(
        "NXD-24",
        "modules.moe.routing",
        "RouterSinkhorn stores sinkhorn_tol but never passes it to _sinkhorn, so the tolerance is never "
        "checked.",
        "The tolerance is checked: AssertionError when the last iteration's change is not below it.",
        "None unless sinkhorn_tol is set; then Trainium trains on where the reference stops.",
        "NxD modules/moe/routing.py:269-314",
    ),
    Deviation(
        "ON-17",
        "checkpointing",
        "optimum-neuron 0.4.5 knows no expert parallelism: save_pretrained lets NxD write one shard per (EP, TP) "
        "rank (dp_rank_00_ep_rank_XX_tp_rank_XX_pp_rank_XX.pt, each holding the rank's whole state dict), but "
        "the metadata does not mark expert-parallel parameters and consolidation hands every parameter the "
        "tensors of every file, so each non-expert tensor-parallel parameter (FusedLinearsSpec and GQA groups "
        "included) comes out EP times too long.",
        'The metadata marks expert-parallel parameters ("expert_model_parallel": true); consolidation reads '
        "them from every (EP, TP) file in EP-major order and every other parameter from EP rank 0's files; in "
        "NxD's xser layout a tensor absent from an EP rank's folder is read from EP rank 0's, as NxD's loader "
        "does. Expert-data-parallel rank 0 of each (EP, TP) rank writes the model and optimizer shards.",
        "Expert-parallel checkpoints cannot be consolidated with optimum-neuron 0.4.5 on Trainium (wrong "
        "shapes); loading and training are unaffected, and EP = 1 checkpoints are identical.",
        "NxD trainer/checkpoint.py (save_checkpoint, _xser_save_data, _xser_load_data); optimum-neuron §2.8, "
        "§3.3-3.4",
        carries_over=False,
    ),
)


RESULT_CHANGING: frozenset[str] = frozenset(d.id for d in DEVIATIONS if not d.carries_over)
"""Deviations after which a result on the reference backend does not carry over to Trainium as it is, on any
platform (`differs_on` adds platform-specific ones)."""


def carries_over(deviation_id: str, platform: str = DEFAULT_PLATFORM) -> bool:
    """Whether a reference-backend verdict that touched this deviation holds on `platform` as it is."""
    return by_id(deviation_id).carries_over_on(platform)


def is_kit_host_deviation(deviation_id: str) -> bool:
    """Whether the deviation is one of the kit's training host (ON-*): with `--host checkout` the checkout's
    own host runs instead, so it does not apply."""
    return by_id(deviation_id).id.startswith("ON-")


def by_id(deviation_id: str) -> Deviation:
    """The deviation with this id; KeyError names the known ids."""
    for deviation in DEVIATIONS:
        if deviation.id == deviation_id:
            return deviation
    raise KeyError(f"unknown deviation id {deviation_id!r}; known: {', '.join(d.id for d in DEVIATIONS)}")


def render_markdown() -> str:
    """The table of docs/backend-deviations.md."""
    lines = [
        "# Reference backend deviations",
        "",
        "Generated from `conformance/backends/reference/deviations.py` "
        "(`python -m conformance.backends.reference.deviations > docs/backend-deviations.md`).",
        "",
        "The reference backend reproduces neuronx-distributed and optimum-neuron's training host, except in",
        "the places below, where the released code has a bug or a surprise. There it does the right thing.",
        "Conformance reports cite these ids when a check touches one of them.",
        "",
        "A check that passes while touching a deviation marked *no* in the last column (for the platform the",
        f"run targets: `--platform {'|'.join(PLATFORMS)}`, default {DEFAULT_PLATFORM}) is reported as a WARN: its verdict",
        "does not carry over to Trainium as it is.",
        "",
        "| id | component | released Neuron stack | reference backend | impact on a Trainium run | source "
        "| a pass carries over |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in DEVIATIONS:
        carries = _carries_cell(d)
        cells = (d.id, d.component, d.upstream, d.reference, d.trainium_impact, d.source, carries)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _carries_cell(deviation: Deviation) -> str:
    answers = {platform: deviation.carries_over_on(platform) for platform in PLATFORMS}
    if len(set(answers.values())) == 1:
        return "yes" if deviation.carries_over else "no"
    return "; ".join(f"{platform}: {'yes' if ok else 'no'}" for platform, ok in answers.items())


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
