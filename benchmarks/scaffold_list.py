"""Time `scaffold list` over every decoder-only causal LM of the installed transformers, cold and warm.

    python benchmarks/scaffold_list.py [--types llama gpt2 ...]

- cold: `python -m scaffold list` with an empty user cache (`$NXD_SCAFFOLD_CACHE` pointed at a fresh
  folder): every type is analysed, in a process per core; what the first run after installing or
  upgrading transformers or nxd-scaffold costs;
- warm: the same command again: the verdicts are read back from the cache.

Wall-clock seconds and the CPU seconds of the command and its children are printed for both. The exit
status is 1 when the warm run reaches TARGET_SECONDS (cold runs are reported, not judged: they are paid
once per installation, and their time is the analysis's, one process per core).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 10.0


def _run(types: list[str], cache: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the children, last output line) of one `scaffold list`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "NXD_SCAFFOLD_CACHE": str(cache),
        "COLUMNS": "200",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "scaffold", "list", *types],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"scaffold list failed:\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, result.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=[], help="only these types (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scaffold-list-bench-") as folder:
        cold = _run(args.types, Path(folder))
        warm = _run(args.types, Path(folder))
    print(f"cores: {os.cpu_count()}; {cold[2]}")
    for name, (wall, cpu, _) in (("cold", cold), ("warm", warm)):
        print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU")
    return 1 if warm[0] >= TARGET_SECONDS else 0


if __name__ == "__main__":
    sys.exit(main())
