"""Where a generated package goes, and everything a generation changes there (computed, not written).

- `--repo PATH`: an optimum-neuron checkout; the package goes to
  `PATH/optimum/neuron/models/training/<package>/` and the model is registered (scaffold.registration);
- `--out DIR`: `DIR/<package>/`;
- neither: `workspace/<package>/` under the current directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .package import Generation
from .registration import ModelNames, Registration, model_package_dir, plan_registration
from .writing import Changes

WORKSPACE = Path("workspace")


@dataclass(frozen=True)
class Destination:
    """The package folder and, with --repo, the checkout it is registered in."""

    package_dir: Path
    repo: Path | None = None

    @property
    def root(self) -> Path:
        """The folder that paths are shown relative to."""
        return self.repo if self.repo is not None else self.package_dir.parent


def resolve_destination(package_name: str, repo: Path | None, out: Path | None) -> Destination:
    """The destination for `package_name` (ScaffoldError when `repo` is not an optimum-neuron checkout)."""
    if repo is not None:
        repo = repo.resolve()
        return Destination(model_package_dir(repo, package_name), repo)
    return Destination((out if out is not None else WORKSPACE) / package_name)


def model_names(generation: Generation) -> ModelNames:
    """The names registration needs, from the generation's answers."""
    answers = generation.answers
    return ModelNames(
        model_type=answers["model_type"],
        package_name=answers["package_name"],
        modeling_module=answers["modeling_module"],
        base_model_class=answers["base_model_class"],
        causal_lm_class=answers["causal_lm_class"],
        test_model=answers["test_model"],
    )


def plan_changes(
    generation: Generation, destination: Destination, files: dict[str, bytes] | None = None
) -> tuple[Changes, Registration | None]:
    """The package folder (`files`, default: the generation's) plus, with a checkout, the registration."""
    changes = Changes(
        folders={destination.package_dir: dict(files if files is not None else generation.files)}
    )
    registration = None
    if destination.repo is not None:
        registration = plan_registration(destination.repo, model_names(generation))
        changes.files.update(registration.files)
    return changes, registration
