"""The one shape of a conformance check (DESIGN §5, STYLE "One shape per check").

A check is a `Check` subclass in its own module of `conformance/checks/`, exposed as the module's `CHECK`
(the registry finds it there, `registry.py`). It has:

- a typed configuration: a frozen `CheckConfig` dataclass whose fields, in order, are what a report row
  names (its label);
- `plan(profile, catalogue)`: the configurations a profile runs for one architecture;
- `prepare(config, workspace)`: host-side work before the ranks run (checkpoints, adapters), giving a job
  (a picklable value with a `tp_size`, and an `ep_size` where it runs with expert parallelism);
- `on_rank(package, job)`: the function every rank runs for the job, the package mounted, through the one
  shared harness (`on_rank.py`): steps taken together (`rank_steps.rank_step`), errors captured per job,
  deviations the reference backend went through collected from every rank. Rank 0's return value comes
  back;
- `judge(job, value)`: the `Verdict` on what came back (figures, reasons, plots), in the host process.

`Check.run` ties them together: SKIP for a configuration the catalogue cannot build, jobs grouped by TP
and EP size with one launcher call per pair, on T x EP ranks (`dispatch.py`), a crashed or hung call as a FAIL of each of its jobs,
a clear refusal at construction as UNSUPPORTED, and one `CheckResult` per configuration, in order. A check
that needs two rounds on the ranks (topology change: save at one size, load at another) overrides `run`
and calls `dispatch.run_jobs` twice; nothing else differs.
"""

from __future__ import annotations

import abc
import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from conformance.results import CheckResult, Plot, Status

from .job_errors import JobError

if TYPE_CHECKING:
    from conformance.checks import RunSettings
    from conformance.profiles import ModelCatalogue
    from reference_models import Variant


@dataclass(frozen=True)
class CheckConfig:
    """What one row of a check runs. Subclasses add fields; their order is the order of the row's label.

    Fields named in `HIDDEN_WHEN_DEFAULT` are left out of the row's configuration while they hold their
    default (so that an option only shows where it is on).
    """

    variant: str
    """A catalogue variant, `<model_type>/<name>`."""

    HIDDEN_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset()

    @property
    def tp_sizes(self) -> tuple[int, ...]:
        """Every TP size the configuration runs at (one for most checks)."""
        return (int(self.tp_size),)

    @property
    def parallel_sizes(self) -> tuple[tuple[int, int], ...]:
        """Every (TP, EP) size the configuration runs at; EP is 1 where the configuration has no `ep_size`."""
        return tuple((tp, int(getattr(self, "ep_size", 1))) for tp in self.tp_sizes)

    def as_dict(self) -> dict[str, Any]:
        """The row's configuration: plain JSON values, in field order."""
        found: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name in self.HIDDEN_WHEN_DEFAULT and value == item.default:
                continue
            found[item.name] = value
        return found

    def exercised(self) -> Exercised:
        """What the configuration exercises, for the "not tested by this profile" list (`coverage.py`)."""
        return Exercised(tp_sizes=self.tp_sizes, ep_sizes=self.ep_sizes)

    @property
    def ep_sizes(self) -> tuple[int, ...]:
        """Every expert-parallel size the configuration runs at (1 without an `ep_size` field)."""
        return tuple(dict.fromkeys(ep for _, ep in self.parallel_sizes))


@dataclass(frozen=True)
class Exercised:
    """What a configuration runs: TP sizes, the `TrainingNeuronConfig` options that change the computation
    path (every one it sets, defaults included), the attention implementation and the dtype."""

    tp_sizes: tuple[int, ...]
    options: tuple[tuple[str, Any], ...] = ()
    attn_implementation: str = "eager"
    dtype: str = "float32"
    pipeline_parallel_size: int = 1
    ep_sizes: tuple[int, ...] = (1,)
    """Expert-parallel sizes (mixture-of-experts models; 1 is no expert parallelism)."""


class RankJob(Protocol):
    """What `prepare` hands to the ranks: anything picklable with the TP size it runs at (and, optionally,
    an `ep_size`: the ranks are then T x EP, each EP rank a data-parallel rank, `job_ep_size`)."""

    @property
    def tp_size(self) -> int: ...


def job_ep_size(job: Any) -> int:
    """The expert-parallel size a job runs at: its `ep_size`, else 1."""
    return int(getattr(job, "ep_size", 1))


ConfigT = TypeVar("ConfigT", bound=CheckConfig)
JobT = TypeVar("JobT", bound=RankJob)
ValueT = TypeVar("ValueT")


@dataclass
class RankReport(Generic[ValueT]):
    """One job as it came back from the ranks."""

    value: ValueT | None
    """Rank 0's return value of `on_rank` (None when the job stopped with an error)."""
    error: JobError | None = None
    deviations: tuple[str, ...] = ()
    """Ids of reference-backend deviations any rank went through during the job (`deviation_record`)."""
    seconds: float = 0.0


@dataclass
class Verdict:
    """What `judge` decides: figures always; reasons make it a FAIL unless `status` says otherwise."""

    figures: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    status: Status | None = None
    """None: FAIL when there are reasons, PASS otherwise."""
    notes: list[str] = field(default_factory=list)
    """Reasons shown on a PASS too (they never make it a FAIL)."""
    traceback: str | None = None
    seconds: float = 0.0
    """Host-side seconds the judgement took, added to the job's."""


@dataclass
class Workspace:
    """Host-side resources of one `Check.run`: the settings, a scratch folder, the checkpoints."""

    settings: RunSettings
    scratch: Path

    def folder(self, index: int) -> Path:
        """A fresh folder for configuration `index` (removed when `run` ends)."""
        path = self.scratch / f"case-{index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint(self, entry: Variant) -> str:
        """The catalogue checkpoint of `entry` with dropout switched off: what runs that are compared with
        each other (or with transformers) load (`compared_checkpoints`)."""
        from conformance.model_runs.compared_checkpoints import without_dropout
        from reference_models import build

        return str(without_dropout(build(entry, self.settings.cache_dir)))

    def original_checkpoint(self, entry: Variant) -> str:
        """The catalogue checkpoint as built, dropout included."""
        from reference_models import build

        return str(build(entry, self.settings.cache_dir))


class Check(abc.ABC, Generic[ConfigT, JobT, ValueT]):
    """One conformance check (see the module docstring)."""

    name: ClassVar[str]
    """The check's name in reports, `--checks` and results.json."""
    order: ClassVar[int]
    """Where it runs in a profile and appears in reports (smaller first)."""
    config_type: ClassVar[type[CheckConfig]]
    tolerance: ClassVar[str]
    """The bound every result carries, and why it is that bound (rendered in docs/conformance-checks.md)."""
    key_figures: ClassVar[tuple[str, ...]] = ()
    """The figures a report's summary row shows, in order (all of them when empty)."""

    # --- what a check defines ------------------------------------------------------------------------

    @abc.abstractmethod
    def plan(self, profile: str, catalogue: ModelCatalogue) -> list[ConfigT]:
        """The configurations `profile` runs for the architecture of `catalogue` (empty: not run)."""

    @abc.abstractmethod
    def prepare(self, config: ConfigT, workspace: Workspace, index: int) -> JobT:
        """The job for `config` (host side: build checkpoints, write inputs into `workspace.folder(index)`)."""

    @abc.abstractmethod
    def on_rank(self, package: ModuleType, job: JobT) -> ValueT:
        """Run the job on this rank (every rank calls it); rank 0's return value is judged."""

    @abc.abstractmethod
    def judge(self, job: JobT, value: ValueT) -> Verdict:
        """The verdict on what rank 0 returned (host side)."""

    # --- what a check may refine ---------------------------------------------------------------------

    def skip_reason(self, config: ConfigT) -> str | None:
        """Why `config` cannot run here (a SKIP), or None: by default, a TP size the catalogue says the
        variant cannot be built at (the parity check checks that refusal itself)."""
        from reference_models import variant

        entry = variant(config.variant)
        refusals = [
            f"{size_label(tp, ep)}: {reason}"
            for tp, ep in sorted(set(config.parallel_sizes))
            if (reason := entry.unsupported_reason(tp, ep))
        ]
        if not refusals:
            return None
        return f"{entry.key} cannot be built at {'; '.join(refusals)} (parity checks the refusal)"

    def judge_failure(self, job: JobT, error: JobError) -> Verdict:
        """The verdict on a job that stopped with `error`: UNSUPPORTED for a clear refusal while the model
        was built, FAIL otherwise."""
        if error.refusal:
            return Verdict(
                status=Status.UNSUPPORTED,
                reasons=[f"the model refuses this configuration while it is built: {error.message}"],
                figures={"refused_at": error.step},
                traceback=error.traceback,
            )
        return Verdict(reasons=[error.reason], traceback=error.traceback)

    # --- the shared flow -----------------------------------------------------------------------------

    def run(self, package_dir: Path, configs: Sequence[ConfigT], settings: RunSettings) -> list[CheckResult]:
        """One `CheckResult` per configuration, in order: skipped, or prepared, run on the ranks (one
        launcher call per TP size) and judged."""
        from .dispatch import run_jobs

        with tempfile.TemporaryDirectory(prefix=f"{self.name}-") as scratch:
            results, pending = self.prepare_all(configs, Workspace(settings, Path(scratch)))
            reports = run_jobs(self, package_dir, [job for _, _, job in pending], settings)
            for (index, config, job), report in zip(pending, reports):
                results[index] = self.finish(config, job, report, settings)
        return [results[index] for index in range(len(configs))]

    def prepare_all(
        self, configs: Sequence[ConfigT], workspace: Workspace
    ) -> tuple[dict[int, CheckResult], list[tuple[int, ConfigT, JobT]]]:
        """SKIP results by index for what cannot run, and (index, config, job) for the rest."""
        results: dict[int, CheckResult] = {}
        pending: list[tuple[int, ConfigT, JobT]] = []
        for index, config in enumerate(configs):
            reason = self.skip_reason(config)
            if reason is not None:
                results[index] = self.result(config, Verdict(status=Status.SKIP, reasons=[reason]))
            else:
                pending.append((index, config, self.prepare(config, workspace, index)))
        return results, pending

    def finish(
        self, config: ConfigT, job: JobT, report: RankReport[ValueT], settings: RunSettings
    ) -> CheckResult:
        """The result of one job: judged (or its failure judged), with the deviations it went through and
        the WARN policy of the reference backend applied."""
        import time

        start = time.perf_counter()
        try:
            if report.error is not None:
                verdict = self.judge_failure(job, report.error)
            else:
                verdict = self.judge(job, report.value)  # type: ignore[arg-type]
        except Exception as exc:  # a fault of the judgement itself: a FAIL that says so
            from .rank_steps import error_of

            error = error_of("judging the result", exc)
            verdict = Verdict(reasons=[error.reason], traceback=error.traceback)
        verdict.seconds += time.perf_counter() - start
        result = self.result(config, verdict, deviations=report.deviations, seconds=report.seconds)
        if settings.backend == "reference":
            if settings.host == "checkout":
                drop_kit_host_deviations(result)
            warn_where_trainium_differs(result, settings.platform)
        return result

    def result(
        self,
        config: ConfigT,
        verdict: Verdict,
        deviations: Sequence[str] = (),
        seconds: float = 0.0,
    ) -> CheckResult:
        """A verdict as the reports see it."""
        status = verdict.status or (Status.FAIL if verdict.reasons else Status.PASS)
        return CheckResult(
            check=self.name,
            configuration=config.as_dict(),
            status=status,
            figures=verdict.figures,
            reasons=list(verdict.reasons) + list(verdict.notes),
            tolerance=self.tolerance,
            deviations=sorted(set(deviations)),
            plots=verdict.plots,
            seconds=round(seconds + verdict.seconds, 6),
            traceback=verdict.traceback,
            key_figures=[name for name in self.key_figures if name in verdict.figures],
        )

    def __repr__(self) -> str:
        return f"<check {self.name}>"


def size_label(tp_size: int, ep_size: int = 1) -> str:
    """`T=2`, or `T=2, EP=2` with expert parallelism: how reasons and steps name a mesh."""
    return f"T={tp_size}" if ep_size == 1 else f"T={tp_size}, EP={ep_size}"


def drop_kit_host_deviations(result: CheckResult) -> None:
    """With `--host checkout` the checkout's own host ran, so the kit host's deviations (ON-*) did not."""
    from conformance.backends.reference.deviations import is_kit_host_deviation

    result.deviations = [d for d in result.deviations if not is_kit_host_deviation(d)]


def warn_where_trainium_differs(result: CheckResult, platform: str = "trn1") -> None:
    """A PASS that touched a deviation after which Trainium (`platform`) behaves differently becomes a WARN,
    with the deviation's Trainium impact as the reason (`Deviation.carries_over_on`)."""
    from conformance.backends.reference.deviations import by_id, carries_over

    differing = [d for d in result.deviations if not carries_over(d, platform)]
    if result.status is not Status.PASS or not differing:
        return
    result.status = Status.WARN
    for deviation_id in differing:
        result.reasons.append(
            f"passes on the reference backend, but {deviation_id} applies: {by_id(deviation_id).trainium_impact}"
        )


def configurations(check: Check[Any, Any, Any], data: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Typed configurations from plain dicts (a results.json row, a test's table)."""
    return [check.config_type(**dict(item)) for item in data]
