"""Breadth: which decoder-only causal LMs of the installed transformers scaffold, and which pass conformance.

    python benchmarks/breadth.py [--types llama phi3 ...] [--profile quick] [--markdown breadth.md]

Every candidate type (`scaffold list`'s) is analysed; each one that scaffolds is then checked as a user
checks it, `python -m conformance TYPE --profile PROFILE` in a fresh working folder (the model scaffolded
with no edits, then every check of the profile). Each type lands in one of three rows:

- passes: it scaffolds and the profile exits 0 (PASS, WARN, UNSUPPORTED or SKIP rows only);
- fails: it scaffolds and the profile reports a FAIL (the failing checks are named) or does not finish;
- refused: the analysis refuses it (its refusal codes), or stops on input it cannot take with a message
  that says so (a config class that cannot be built with its defaults, say: `stopped: <message>`); an
  internal error of the analysis is a `fails` row.

Prints a Markdown table (one line per type, then the totals) and writes it to `--markdown` if given. The
exit status is 1 when a scaffolding type fails, so the script doubles as the breadth gate of issue 10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaffold.architectures import decoder_only_types, survey  # noqa: E402
from scaffold.facts_cache import WITHOUT_FRAMEWORKS  # noqa: E402

COUNTED = ("PASS", "WARN", "UNSUPPORTED", "SKIP", "FAIL")
INTERNAL_ERROR = "internal error"  # how `scaffold.architectures` words an analysis bug


@dataclass
class Outcome:
    """What happened to one model type."""

    model_type: str
    codes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    failing: list[str] = field(default_factory=list)
    problem: str = ""
    seconds: float = 0.0

    @property
    def row(self) -> str:
        if self.codes:
            return "refused"
        return "fails" if self.problem or self.counts.get("FAIL") else "passes"


def check(model_type: str, profile: str, timeout: float) -> Outcome:
    """Scaffold `model_type` and run the conformance profile on it, in a fresh folder."""
    # `decoder_only_types` imported transformers here without torch (USE_TORCH=0 ...): the conformance run
    # needs it, so those switches stay in this process.
    inherited = {name: value for name, value in os.environ.items() if name not in WITHOUT_FRAMEWORKS}
    env = {
        **inherited,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "conformance", model_type, "--profile", profile, "--out", "report"]
    outcome = Outcome(model_type)
    with tempfile.TemporaryDirectory(prefix="breadth-") as folder:
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            outcome.problem = f"did not finish in {timeout:.0f} s"
            return outcome
        finally:
            outcome.seconds = time.perf_counter() - start
        results_file = Path(folder) / "report" / model_type / "results.json"
        if not results_file.is_file():
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            outcome.problem = f"exit {done.returncode}, no report: {last[0]}"
            return outcome
        results = json.loads(results_file.read_text())
    outcome.counts = {status: results["counts"].get(status, 0) for status in COUNTED}
    outcome.failing = sorted({row["check"] for row in results["results"] if row["status"] == "FAIL"})
    return outcome


def markdown(outcomes: list[Outcome], profile: str) -> str:
    """The table: type, row, detail (counts, failing checks or refusal codes), seconds; then totals."""
    lines = [
        f"| type | {profile} profile | PASS/WARN/UNSUPPORTED/SKIP/FAIL or refusal codes | seconds |",
        "|---|---|---|---|",
    ]
    for outcome in outcomes:
        if outcome.codes:
            detail, seconds = " ".join(outcome.codes), ""
        else:
            detail = "/".join(str(outcome.counts.get(status, 0)) for status in COUNTED)
            if outcome.failing:
                detail += f" (FAIL: {', '.join(outcome.failing)})"
            if outcome.problem:
                detail = outcome.problem
            seconds = f"{outcome.seconds:.0f}"
        lines.append(f"| {outcome.model_type} | {outcome.row} | {detail} | {seconds} |")
    totals = {row: sum(outcome.row == row for outcome in outcomes) for row in ("passes", "fails", "refused")}
    lines.append("")
    lines.append(
        f"{len(outcomes)} types: {totals['passes']} scaffold and pass, {totals['fails']} scaffold and fail, "
        f"{totals['refused']} refused."
    )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="*", default=[], help="only these types (default: all candidates)")
    parser.add_argument("--profile", default="quick", choices=("quick", "full"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per conformance run")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    outcomes = []
    for verdict in survey(args.types or decoder_only_types(), lambda verdict: None):
        if verdict.error is not None and verdict.error.startswith(INTERNAL_ERROR):
            outcome = Outcome(verdict.model_type, problem=f"analysis error: {verdict.error}")
        elif verdict.error is not None:
            outcome = Outcome(verdict.model_type, codes=(f"stopped: {verdict.error}",))
        elif verdict.codes:
            outcome = Outcome(verdict.model_type, codes=verdict.codes)
        else:
            outcome = check(verdict.model_type, args.profile, args.timeout)
        print(f"{outcome.model_type}: {outcome.row} {outcome.problem}".rstrip(), file=sys.stderr, flush=True)
        outcomes.append(outcome)
    table = markdown(outcomes, args.profile)
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    return 1 if any(outcome.row == "fails" for outcome in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
