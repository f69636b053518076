"""The environment each rank process sees: torchrun's variables plus the caller's additions."""

from __future__ import annotations

from collections.abc import Mapping

MASTER_ADDR = "127.0.0.1"

DEFAULT_ENV: Mapping[str, str] = {"OMP_NUM_THREADS": "1"}
"""Applied before the caller's `env`, which may override it: up to 8 ranks share a couple of cores."""

LAUNCHER_OWNED = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "ROLE_NAME",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_RUN_ID",
        "TORCHELASTIC_RESTART_COUNT",
        "TORCHELASTIC_MAX_RESTARTS",
        "TORCHELASTIC_USE_AGENT_STORE",
    }
)
"""Variables the launcher sets itself; a caller overriding them would break the rendezvous."""


def checked_extra_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """Validate the caller's `env` and return it as a plain dict.

    Raises TypeError for non-string keys or values and ValueError for variables the launcher owns.
    """
    if env is None:
        return {}
    bad_types = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad_types:
        raise TypeError(f"env keys and values must be str; not for {bad_types!r}")
    owned = sorted(LAUNCHER_OWNED.intersection(env))
    if owned:
        raise ValueError(
            f"env may not set {', '.join(owned)}: the launcher sets them for each rank "
            "(single node, one process per rank). Pass other variables only."
        )
    return dict(env)


def rank_env(
    rank: int, world_size: int, *, master_port: int, run_id: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The variables torchrun would set for `rank` of a single-node job, over `DEFAULT_ENV` and `extra`.

    ``TORCHELASTIC_USE_AGENT_STORE`` tells ``init_process_group`` that the launcher (like torchrun's agent)
    hosts the TCPStore at MASTER_ADDR:MASTER_PORT, so every rank connects as a client and no port is raced.
    """
    env = dict(DEFAULT_ENV)
    env.update(extra)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        GROUP_RANK="0",
        GROUP_WORLD_SIZE="1",
        ROLE_RANK=str(rank),
        ROLE_WORLD_SIZE=str(world_size),
        ROLE_NAME="default",
        MASTER_ADDR=MASTER_ADDR,
        MASTER_PORT=str(master_port),
        TORCHELASTIC_RUN_ID=run_id,
        TORCHELASTIC_RESTART_COUNT="0",
        TORCHELASTIC_MAX_RESTARTS="0",
        TORCHELASTIC_USE_AGENT_STORE="True",
    )
    return env
