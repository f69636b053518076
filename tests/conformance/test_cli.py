"""The command line's contract with a user and with CI: usage errors are one line on stderr, exit status 2,
and nothing run or written; `--version` and `--help` (which documents the exit statuses) exit 0."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from rich.console import Console

from conformance.cli import EXIT_USAGE, main

USAGE_ERRORS = {
    "zero timeout": (["llama", "--timeout", "0"], "argument --timeout: must be more than 0 seconds, not 0"),
    "negative timeout": (
        ["llama", "--timeout=-5"],
        "argument --timeout: must be more than 0 seconds, not -5",
    ),
    "timeout not a number": (["llama", "--timeout", "soon"], "argument --timeout: takes seconds, not 'soon'"),
    "unknown check": (["llama", "--checks", "parity,speed"], "unknown checks ['speed']"),
    "no check named": (["llama", "--checks", ","], "--checks names no check"),
    "unknown profile": (["llama", "--profile", "slow"], "argument --profile: invalid choice: 'slow'"),
    "unknown model type": (["llama", "no_such_model"], "no reference models for 'no_such_model'"),
    "package with two types": (["llama", "mistral", "--package", "."], "--package checks one model type"),
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS), ids=list(USAGE_ERRORS))
def test_a_usage_error_is_one_line_on_stderr_exit_2_and_nothing_written(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments, message = USAGE_ERRORS[case]
    monkeypatch.chdir(tmp_path)
    status = main([*arguments, "--out", str(tmp_path / "reports")], console=Console(width=200))
    captured = capsys.readouterr()
    assert status == EXIT_USAGE == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("python -m conformance: error: ") and message in line, line
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []  # no report folder, no scaffolded workspace


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"python -m conformance (nxd-scaffold) {metadata.version('nxd-scaffold')}"
    )
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "exit status:" in text
    for line in ("0  no check failed", "1  at least one check FAILed", "2  usage error"):
        assert line in text
