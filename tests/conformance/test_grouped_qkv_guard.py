"""A fused projection the forward cuts into a constant number of groups stops the generated model at
construction when a rank's heads do not fill the groups.

CodeGen's forward cuts `qkv_proj`'s output into `mp_num = 4` groups, then each group into heads; the
generated model keeps that cut on each rank's share, so it works only when every rank holds a multiple of 4
heads. NXS027 makes the attention's constructor raise `NotImplementedError` otherwise. The oracle for which
layouts work is transformers itself: a CodeGen whose whole head count is one rank's count runs its forward
exactly when the generated model may be built at that layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import CodeGenConfig, CodeGenForCausalLM

from conformance.tensor_parallel_run import run_tensor_parallel

HEAD_DIM = 4
TP_SIZE = 2


def _config(heads: int) -> CodeGenConfig:
    return CodeGenConfig(
        vocab_size=64, n_positions=16, n_embd=heads * HEAD_DIM, n_layer=1, n_head=heads, rotary_dim=HEAD_DIM
    )


def _transformers_runs(heads: int) -> bool:
    """transformers' CodeGen with `heads` heads in all runs a forward."""
    torch.manual_seed(0)
    model = CodeGenForCausalLM(_config(heads)).eval()
    try:
        with torch.no_grad():
            model(torch.arange(6).unsqueeze(0))
    except RuntimeError:
        return False
    return True


def _build(package_dir: str, heads: int, tp_size: int) -> str:
    from conformance.model_package import mount
    from conformance.model_runs.parallel_model import training_config

    package, unmount = mount(Path(package_dir))
    try:
        modeling = importlib.import_module(f"{package.__name__}.modeling_codegen")
        modeling.CodeGenForCausalLM(_config(heads), training_config(tp_size))
        return "built"
    except NotImplementedError as error:
        return f"NotImplementedError: {error}"
    finally:
        unmount()


@pytest.mark.parametrize("heads", [8, 4])
def test_the_generated_model_is_built_exactly_where_transformers_runs_the_rank_heads(
    heads: int, generated: Callable[[str], Path]
) -> None:
    per_rank = heads // TP_SIZE
    results = run_tensor_parallel(_build, TP_SIZE, str(generated("codegen")), heads, TP_SIZE)
    if _transformers_runs(per_rank):
        assert results == ["built"] * TP_SIZE
        return
    expected = (
        f"NotImplementedError: {per_rank} query and {per_rank} key/value heads per rank ({heads} heads over "
        f"tensor-parallel size {TP_SIZE}): "
    )
    for result in results:
        assert result.startswith(expected), result
        assert "into 4 groups of whole heads" in result
        assert result.endswith("use a tensor-parallel size that leaves a multiple of 4 heads per rank")


def test_transformers_needs_whole_heads_in_each_group() -> None:
    """The oracle itself: 4 heads fill CodeGen's 4 groups, 2 heads cannot."""
    assert _transformers_runs(4)
    assert not _transformers_runs(2)
