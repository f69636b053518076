"""Groups of tensors (q/k/v, gate/up, their LoRA parts) that a multi-file checkpoint may split (ON-03).

Loading parks each part until its whole group has been seen; whatever is still parked after the last
file is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def take_group(
    state_dict: dict[str, torch.Tensor],
    upstanding_sharded_params: dict[str, torch.Tensor],
    names: Sequence[str],
) -> list[torch.Tensor] | None:
    """All tensors of `names` once every one has been seen, else None (deviation ON-03).

    Parts found in `state_dict` move to `upstanding_sharded_params`, which the caller keeps across the
    files of a multi-file checkpoint; a group completes whenever its last part arrives, independently of
    other pending groups.
    """
    for name in names:
        if name in state_dict:
            upstanding_sharded_params[name] = state_dict.pop(name)
    if all(name in upstanding_sharded_params for name in names):
        return [upstanding_sharded_params.pop(name) for name in names]
    return None


def check_no_upstanding_sharded_params(upstanding_sharded_params: dict[str, torch.Tensor]) -> None:
    """Raise if a fused or GQA group is still incomplete; call it after `adapt_state_dict` on the last file.

    `adapt_state_dict` parks the parts of a group (q/k/v of a fused GQA layer, gate/up of a fusion, the
    LoRA tensors of either) until all have been seen, so a multi-file checkpoint may split a layer anywhere
    (deviation ON-03). Whatever is left after the last file can never be loaded.
    """
    if upstanding_sharded_params:
        names = ", ".join(sorted(upstanding_sharded_params))
        raise ValueError(
            "the checkpoint ended before these parameters could be fused or sharded, because other parts "
            f"of their group were never found: {names}. Check that the checkpoint holds every projection "
            "of each fused layer (and every LoRA tensor of each targeted group)."
        )
