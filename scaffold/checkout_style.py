"""Files edited in an optimum-neuron checkout keep passing the checkout's own `ruff check` and `ruff format`.

The registration edits (scaffold.registration) insert a few lines in the layout of their neighbours, but
whether a line must be wrapped depends on its length (a long `--test-model` id, a long class name) and on
the checkout's settings. So an edited file is finished the way its maintainers finish theirs: `ruff
check --fix --select I` (import order) then `ruff format`, with the checkout's configuration (ruff finds
it from the file's path). That is done only when the file was clean under both before the edit: then
they change nothing but the inserted lines; a file that was not clean keeps every line that was not
inserted as it was.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import ScaffoldError


def conform(path: Path, original: str, edited: str) -> str:
    """`edited` (the new text of `path`, in its checkout) finished by the checkout's ruff (see above)."""
    if not _clean(path, original):
        return edited
    sorted_imports = _ruff(
        path, "check", "--fix", "--select", "I", "--exit-zero", "--quiet", stdin=edited
    ).stdout
    return _ruff(path, "format", stdin=sorted_imports).stdout


def _clean(path: Path, text: str) -> bool:
    imports = _ruff(path, "check", "--select", "I", "--quiet", stdin=text, check=False)
    formatted = _ruff(path, "format", "--check", "--quiet", stdin=text, check=False)
    return imports.returncode == 0 and formatted.returncode == 0


def _ruff(
    path: Path, command: str, *args: str, stdin: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ruff on `stdin` as if it were `path`: the settings are those that apply to `path`.

    Bytes in and out, decoded here: text mode would turn the file's CRLF line endings into LF.
    """
    from ruff import find_ruff_bin

    result = subprocess.run(
        [find_ruff_bin(), command, *args, "--stdin-filename", str(path.resolve()), "-"],
        input=stdin.encode("utf-8"),
        capture_output=True,
        check=False,
        cwd=path.parent,
    )
    decoded = subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8"),
        result.stderr.decode("utf-8", "replace"),
    )
    if check and result.returncode != 0:
        raise ScaffoldError(
            f"{path}: ruff {command} failed on the edited file: {decoded.stderr.strip()}",
            hint="this is a bug in the registration edit; add the entry by hand meanwhile",
        )
    return decoded
