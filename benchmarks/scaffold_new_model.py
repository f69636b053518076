"""Time `scaffold new-model` for the target models, in-process and as a fresh subprocess.

    python benchmarks/scaffold_new_model.py [--models llama mistral ...] [--repeat N]

In-process timings run in one interpreter, in the order given (the first one also pays for importing
transformers and torch); the subprocess timings are what a user waits for at the command line. Each
figure is the best of `--repeat` runs. Output goes to a temporary folder (`--out ... --force`).
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


def _subprocess(model_type: str, out: Path) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
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
    times["copier"] = clock() - start
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
        out = Path(folder)
        for model_type in args.models:
            inside = min(_in_process(model_type, out) for _ in range(args.repeat))
            outside = min(_subprocess(model_type, out) for _ in range(args.repeat))
            rows.append((model_type, inside, outside))
    print(f"{'model':10} {'in-process (s)':>15} {'subprocess (s)':>15}  target < {TARGET_SECONDS:.0f} s")
    for model_type, inside, outside in rows:
        verdict = "ok" if max(inside, outside) < TARGET_SECONDS else "over"
        print(f"{model_type:10} {inside:15.2f} {outside:15.2f}  {verdict}")
    print(f"(cpus: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
