"""Where a generated package goes, and everything a generation changes there (computed, not written).

- `--repo PATH`: an optimum-neuron checkout; the package goes to
  `PATH/optimum/neuron/models/training/<package>/` and the model is registered (scaffold.registration);
- `--out DIR`: `DIR/<package>/`;
- neither: `workspace/<package>/` under the current directory.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from .package import Generation
from .record import placeholder_test_model
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


def model_names(generation: Generation, previous_test_models: tuple[str, ...] = ()) -> ModelNames:
    """The names registration needs, from the generation; `previous_test_models` may be replaced."""
    emitted = generation.emitted
    request = emitted.request
    return ModelNames(
        model_type=request.model_type,
        package_name=request.package_name,
        modeling_module=request.modeling_filename.removesuffix(".py"),
        base_model_class=emitted.source.base_model_class,
        causal_lm_class=emitted.source.causal_lm_class,
        test_model=generation.record.test_model,
        display_name=emitted.source.facts.display_name,
        pipeline_parallelism=declares_pipeline_parallelism(emitted.text),
        replaceable_test_models=(placeholder_test_model(request.model_type), *previous_test_models),
    )


def declares_pipeline_parallelism(text: str) -> bool:
    """Whether a generated modeling file sets `SUPPORTS_PIPELINE_PARALLELISM = True` in a class."""
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and any(
                        getattr(t, "id", None) == "SUPPORTS_PIPELINE_PARALLELISM" for t in statement.targets
                    )
                    and isinstance(statement.value, ast.Constant)
                    and statement.value.value is True
                ):
                    return True
    return False


def plan_changes(
    generation: Generation,
    destination: Destination,
    files: dict[str, bytes] | None = None,
    previous_test_models: tuple[str, ...] = (),
) -> tuple[Changes, Registration | None]:
    """The package folder (`files`, default: the generation's) plus, with a checkout, the registration."""
    changes = Changes(
        folders={destination.package_dir: dict(files if files is not None else generation.files)}
    )
    registration = None
    if destination.repo is not None:
        names = model_names(generation, previous_test_models)
        registration = plan_registration(destination.repo, names)
        changes.files.update(registration.files)
    return changes, registration
