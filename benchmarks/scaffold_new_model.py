"""Time `scaffold new-model` for the target models, in-process and as a fresh subprocess.

    python benchmarks/scaffold_new_model.py [--models llama mistral ...] [--repeat N] [--stages]

- in-process: one interpreter that has imported transformers and torch (as tests do), in the order
  given (the first model also pays for importing the scaffolder); the transformers facts are read live;
- subprocess, cold: `python -m scaffold new-model` with an empty facts cache (`$NXD_SCAFFOLD_CACHE`
  pointed at a fresh folder), so it reads the facts in a subprocess that imports transformers' config
  modules (not torch): what the first run after installing or upgrading transformers costs;
- subprocess, warm: the same command again with that cache filled: what a user waits for afterwards.

Each figure is the best of `--repeat` runs. Output goes to a temporary folder (`--out ... --force`). The
exit status is 1 when a warm subprocess or in-process figure reaches the target (cold ones are reported,
not judged: they are paid once per transformers installation).
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("llama", "mistral", "qwen2", "qwen3", "granite")
TARGET_SECONDS = 2.0


def _in_process(model_type: str, out: Path) -> float:
    from rich.console import Console

    from scaffold.cli import main

    start = time.perf_counter()
    status = main(
        ["new-model", model_type, "--out", str(out), "--force"], console=Console(file=io.StringIO())
    )
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"scaffold new-model {model_type} failed with status {status}")
    return elapsed


def _subprocess(model_type: str, out: Path, cache: Path) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "NXD_SCAFFOLD_CACHE": str(cache),
    }
    command = [sys.executable, "-m", "scaffold", "new-model", model_type, "--out", str(out), "--force"]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return elapsed


def _stages(model_type: str) -> dict[str, float]:
    """CPU seconds of each stage of one generation, rules one by one (in-process, after warm-up)."""
    from scaffold.analysis import analyze
    from scaffold.analysis.parsing import parse_module
    from scaffold.emit import EmittedModel, Request, format_python, header
    from scaffold.package import render_package
    from scaffold.rules import RULES, RuleOptions
    from scaffold.rules.base import make_context
    from scaffold.source import locate

    clock = time.process_time
    times: dict[str, float] = {}
    start = clock()
    source = locate(model_type)
    times["locate"] = clock() - start
    start = clock()
    blueprint = analyze(source)
    times["analyze"] = clock() - start
    module = parse_module(source.read_text(), source.display_path)
    for rule in RULES:
        start = clock()
        module = rule(make_context(blueprint, RuleOptions())).transform_module(module)
        times[rule.CODE] = clock() - start
    start = clock()
    text = format_python(header(Request(model_type), source, blueprint) + module.code)
    times["ruff"] = clock() - start
    start = clock()
    render_package(EmittedModel(Request(model_type), source, blueprint, text))
    times["package"] = clock() - start
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(TARGETS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stages", action="store_true", help="also print CPU seconds per stage and rule")
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
            cold = min(_subprocess(model_type, out, _emptied(cache)) for _ in range(args.repeat))
            warm = min(_subprocess(model_type, out, cache) for _ in range(args.repeat))
            rows.append((model_type, cold, warm))
        import transformers.modeling_utils  # noqa: F401  (in-process callers have transformers and torch loaded)

        rows = [(*row, min(_in_process(row[0], out) for _ in range(args.repeat))) for row in rows]
    print(
        f"{'model':10} {'subprocess cold (s)':>20} {'subprocess warm (s)':>20} {'in-process (s)':>15}"
        f"  target < {TARGET_SECONDS:.0f} s (warm, in-process)"
    )
    over = []
    for model_type, cold, warm, inside in rows:
        verdict = "ok" if max(warm, inside) < TARGET_SECONDS else "over"
        if verdict == "over":
            over.append(model_type)
        print(f"{model_type:10} {cold:20.2f} {warm:20.2f} {inside:15.2f}  {verdict}")
    print(f"(cpus: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 1 if over else 0


def _emptied(cache: Path) -> Path:
    """`cache`, emptied for a cold run (the warm runs reuse it afterwards)."""
    import shutil

    shutil.rmtree(cache, ignore_errors=True)
    return cache


if __name__ == "__main__":
    sys.exit(main())
