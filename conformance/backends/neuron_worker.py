"""One torchrun rank of `neuron_launch.run_with_torchrun`: join the group, activate, run, write the result.

    python -m torch.distributed.run --nproc-per-node=T -m conformance.backends.neuron_worker PAYLOAD RESULTS PG

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. The process group is `xla` on a
Trainium host (torch-xla registers it when `torch_xla.distributed.xla_backend` is imported) and gloo when
the launcher itself is tested elsewhere.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from .neuron_launch import REPO_ENV


def main(payload: Path, results: Path, process_group: str) -> None:
    import torch.distributed as dist

    if process_group == "xla":
        import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" process group)
    dist.init_process_group(process_group)
    backend, host, fn, args, kwargs = pickle.loads(payload.read_bytes())
    from conformance.backends import activate

    repo = os.environ.get(REPO_ENV)
    activate(backend, Path(repo) if repo else None, host)
    try:
        value = fn(*args, **kwargs)
        (results / f"rank{dist.get_rank()}.pkl").write_bytes(pickle.dumps(value))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
