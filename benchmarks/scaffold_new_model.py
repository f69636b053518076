"""Time `scaffold new-model` for the target models as a user runs it: a fresh `python -m scaffold` process.

    python benchmarks/scaffold_new_model.py [--models llama mistral ...] [--repeat N] [--stages]

- cold: with an empty facts cache (`$NXD_SCAFFOLD_CACHE` pointed at a fresh folder), so the run reads the
  transformers facts in a subprocess that imports transformers' config modules (not torch): what the first
  run after installing or upgrading transformers costs;
- warm: the same command again with that cache filled: what a user waits for afterwards.

Each figure is the best of `--repeat` runs, as wall-clock seconds and as the CPU seconds the command used
(user + system, children included): on a shared machine the wall clock also measures the other jobs,
the CPU time does not. The exit status is 1 when a cold or warm wall-clock figure exceeds the target.
Output goes to a temporary folder (`--out ... --force`). `--stages` also prints the CPU seconds of each
stage of one in-process generation (reading, analysis, the rules with the import visitors, formatting).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("llama", "mistral", "qwen2", "qwen3", "granite")
TARGET_SECONDS = 5.0


def _run(model_type: str, out: Path, cache: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `python -m scaffold new-model` process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "NXD_SCAFFOLD_CACHE": str(cache),
    }
    command = [sys.executable, "-m", "scaffold", "new-model", model_type, "--out", str(out), "--force"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def _stages(model_type: str) -> dict[str, float]:
    """CPU seconds of each stage of one generation (in-process)."""
    from scaffold.analysis import analyze
    from scaffold.analysis.source_fusions import read_source
    from scaffold.emit import Request, format_python, header
    from scaffold.pipeline import apply_rules
    from scaffold.source import locate

    clock = time.process_time
    times: dict[str, float] = {}
    start = clock()
    source = locate(model_type)
    times["locate"] = clock() - start
    start = clock()
    read = read_source(source)
    times["read"] = clock() - start
    start = clock()
    blueprint = analyze(source, read)
    times["analyze"] = clock() - start
    start = clock()
    module = apply_rules(blueprint, read.module)
    times["rules+imports"] = clock() - start
    start = clock()
    format_python(header(Request(model_type), source, blueprint) + module.code)
    times["ruff"] = clock() - start
    return times


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TARGETS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stages", action="store_true", help="also print CPU seconds per stage")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.stages:
        for model_type in args.models:
            times = _stages(model_type)
            print(f"{model_type}: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in times.items()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaffold-bench-") as folder:
        out = Path(folder) / "out"
        for model_type in args.models:
            cache = Path(folder) / f"cache-{model_type}"
            cold_runs = []
            for _ in range(args.repeat):
                shutil.rmtree(cache, ignore_errors=True)  # an empty facts cache
                cold_runs.append(_run(model_type, out, cache))
            warm_runs = [_run(model_type, out, cache) for _ in range(args.repeat)]
            rows.append((model_type, _best(cold_runs), _best(warm_runs)))
    print(
        f"{'model':10} {'cold wall (s)':>14} {'cold CPU (s)':>13} {'warm wall (s)':>14} {'warm CPU (s)':>13}"
        f"  target <= {TARGET_SECONDS:.0f} s wall, cold and warm"
    )
    over = []
    for model_type, (cold, cold_cpu), (warm, warm_cpu) in rows:
        verdict = "ok" if max(cold, warm) <= TARGET_SECONDS else "over"
        if verdict == "over":
            over.append(model_type)
        print(f"{model_type:10} {cold:14.2f} {cold_cpu:13.2f} {warm:14.2f} {warm_cpu:13.2f}  {verdict}")
    print(f"(cpus: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
