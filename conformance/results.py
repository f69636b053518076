"""What a conformance check returns: one `CheckResult` per configuration, plain data the reports render.

Every check records its figures whether it passes or not (DESIGN §5), and every WARN, UNSUPPORTED, FAIL or
SKIP carries the reasons behind it; every row lists the backend deviations it touched (DESIGN §6).
`results.json` is `RunResults.to_dict()`; its schema is versioned by `SCHEMA_VERSION` (bump the major
number when a field changes meaning or disappears, or a value appears that older readers cannot take; the
minor one when a field is added).

Schema 2.0: the UNSUPPORTED status; deviations on every row (recorded where they happen, not only on rows
that are not PASS); plots carry their pass/fail `threshold`; the run carries `models` (the tiny model of
each variant: shape and traits) and `not_tested` (what the profile did not exercise); the environment
names the host code that ran (`host`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SCHEMA_VERSION = "2.0"


class Status(StrEnum):
    """The verdict of one check in one configuration (DESIGN §5).

    - PASS: it holds here, and nothing known says Trainium differs.
    - WARN: it holds here, but a deviation it went through says Trainium behaves differently.
    - UNSUPPORTED: the model refused the configuration with a clear error (a feature it does not support):
      listed, not a pass, not a defect.
    - FAIL: a defect, a crash or a hang; the reasons name the cause.
    - SKIP: cannot run here (the catalogue cannot build the variant at that size, the config has nothing
      for the check to show), with the reason.
    """

    PASS = "PASS"
    WARN = "WARN"
    UNSUPPORTED = "UNSUPPORTED"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class Series:
    """One line of a plot: `y[i]` at `x[i]`."""

    name: str
    x: list[float]
    y: list[float]


@dataclass
class Plot:
    """A figure a report draws: loss curves, or the error per tensor against its bound."""

    title: str
    x_label: str
    y_label: str
    series: list[Series]
    log_y: bool = False
    kind: str = "line"
    """``"line"`` (curves over steps) or ``"bar"`` (one bar per `x_labels` entry)."""
    x_labels: list[str] = field(default_factory=list)
    threshold: float | None = None
    """The pass/fail line (drawn across the plot), or None."""
    threshold_label: str = ""


@dataclass
class CheckResult:
    """One check in one configuration, with every figure it measured."""

    check: str
    """The check's name (`conformance.harness.registry`): ``parity``, ``round_trip``, ..."""
    configuration: dict[str, Any]
    """What was run: variant, tp_size, sequence_parallel, ... (values are plain JSON)."""
    status: Status
    figures: dict[str, Any] = field(default_factory=dict)
    """Scalars and short lists: max |Δ|, tensors compared, per-step losses, ..."""
    reasons: list[str] = field(default_factory=list)
    """Why it is not a PASS, each naming the cause; notes are allowed on a PASS too."""
    tolerance: str = ""
    """The bound that was applied and why it is that bound."""
    deviations: list[str] = field(default_factory=list)
    """Ids of reference-backend deviations (`docs/backend-deviations.md`) the check touched."""
    plots: list[Plot] = field(default_factory=list)
    seconds: float = 0.0
    traceback: str | None = None
    """The remote traceback of a crashed or failing rank, or the stacks of a hung one."""
    key_figures: list[str] = field(default_factory=list)
    """The figures a summary row shows (a reviewer's first look), in order; details show them all."""

    @property
    def label(self) -> str:
        """``parity llama/gqa T=2 SP=on``: the check and its configuration, short."""
        return f"{self.check} {configuration_label(self.configuration)}".rstrip()

    @property
    def passed(self) -> bool:
        """PASS and WARN hold here; FAIL fails the run; UNSUPPORTED and SKIP are neither."""
        return self.status in (Status.PASS, Status.WARN)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["label"] = self.label
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        data = {key: value for key, value in data.items() if key != "label"}
        data["status"] = Status(data["status"])
        data["plots"] = [
            Plot(**{**plot, "series": [Series(**series) for series in plot["series"]]})
            for plot in data.get("plots", [])
        ]
        return cls(**data)


def configuration_label(configuration: dict[str, Any]) -> str:
    """``llama/gqa T=2 SP=on fuse_qkv=off``: a configuration, short (booleans as on/off)."""
    parts = []
    for key, value in configuration.items():
        if isinstance(value, bool):
            parts.append(f"{_SHORT.get(key, key)}={'on' if value else 'off'}")
        elif key == "variant":
            parts.append(str(value))
        else:
            parts.append(f"{_SHORT.get(key, key)}={value}")
    return " ".join(parts)


_SHORT = {
    "tp_size": "T",
    "sequence_parallel": "SP",
    "fuse_qkv": "fuse_qkv",
    "source_tp_size": "from T",
    "attn_implementation": "attn",
    "ep_size": "EP",
    "source_ep_size": "from EP",
}


@dataclass
class RunResults:
    """Every result of one model's conformance run, and what it ran on."""

    model_type: str
    package_dir: str
    profile: str
    backend: str
    environment: dict[str, str]
    """Versions (python, torch, transformers, nxd-scaffold) and the machine, for the report header."""
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    check_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each check, launcher start-up included (schema 1.1)."""
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per variant the run used: the tiny model's shape and traits (`conformance.model_traits`)."""
    not_tested: list[str] = field(default_factory=list)
    """What the profile did not exercise, computed from its plan (`conformance.coverage`)."""

    @property
    def failed(self) -> list[CheckResult]:
        return [result for result in self.results if result.status is Status.FAIL]

    def counts(self) -> dict[str, int]:
        return {status.value: sum(r.status is status for r in self.results) for status in Status}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "model_type": self.model_type,
            "package_dir": self.package_dir,
            "profile": self.profile,
            "backend": self.backend,
            "environment": dict(self.environment),
            "seconds": self.seconds,
            "check_seconds": dict(self.check_seconds),
            "counts": self.counts(),
            "models": {key: dict(value) for key, value in self.models.items()},
            "not_tested": list(self.not_tested),
            "results": [result.to_dict() for result in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        major = str(data.get("schema_version", "0")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"results schema {data.get('schema_version')} is not readable by schema {SCHEMA_VERSION}"
            )
        return cls(
            model_type=data["model_type"],
            package_dir=data["package_dir"],
            profile=data["profile"],
            backend=data["backend"],
            environment=dict(data["environment"]),
            results=[CheckResult.from_dict(item) for item in data["results"]],
            seconds=data.get("seconds", 0.0),
            check_seconds=dict(data.get("check_seconds", {})),
            models={key: dict(value) for key, value in data.get("models", {}).items()},
            not_tested=list(data.get("not_tested", [])),
        )
