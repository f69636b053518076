"""Put file names and source lines back into remote tracebacks of functions cloudpickle shipped by value.

cloudpickle rewrites the ``co_filename`` of every function it ships by value (closures, lambdas, functions
of ``__main__``) to ``"<dynamic-code>"``, so a rank's traceback would name neither the file nor the line's
text. The launcher records where each shipped function came from while pickling the call, and rewrites
those frames in the tracebacks and stack dumps that come back.
"""

from __future__ import annotations

import io
import linecache
import re
import types
from dataclasses import dataclass
from typing import Any

import cloudpickle

DYNAMIC_FILENAME = "<dynamic-code>"

# Matches traceback ("line 3, in f") and faulthandler ("line 3 in f") frame lines.
_DYNAMIC_FRAME = re.compile(
    r'^(?P<indent>[ \t]*)File "<dynamic-code>", line (?P<line>\d+)(?P<sep>,? in )(?P<name>.+)$'
)


@dataclass(frozen=True)
class _Span:
    first: int
    last: int
    filename: str


class SourceMap:
    """Code object name and line span -> file, for every function seen while pickling a payload."""

    def __init__(self) -> None:
        self._spans: dict[str, list[_Span]] = {}

    def add_code(self, code: types.CodeType) -> None:
        """Record `code` and the code objects nested in it (inner functions, comprehensions)."""
        if code.co_filename != DYNAMIC_FILENAME:
            lines = [line for _, _, line in code.co_lines() if line is not None]
            span = _Span(
                min([code.co_firstlineno, *lines]), max([code.co_firstlineno, *lines]), code.co_filename
            )
            self._spans.setdefault(code.co_name, []).append(span)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self.add_code(const)

    def locate(self, name: str, line: int) -> str | None:
        """The file of the recorded code called `name` that spans `line`; None if unknown or ambiguous."""
        files = {s.filename for s in self._spans.get(name, ()) if s.first <= line <= s.last}
        return files.pop() if len(files) == 1 else None

    def restore(self, text: str) -> str:
        """Rewrite ``<dynamic-code>`` frames in `text` with their file, adding the source line if known."""
        out = []
        for row in text.splitlines(keepends=True):
            match = _DYNAMIC_FRAME.match(row.rstrip("\n"))
            filename = match and self.locate(match["name"], int(match["line"]))
            if not match or not filename:
                out.append(row)
                continue
            indent, line = match["indent"], int(match["line"])
            out.append(f'{indent}File "{filename}", line {line}{match["sep"]}{match["name"]}\n')
            source = linecache.getline(filename, line).strip()
            if source and match["sep"].startswith(","):  # tracebacks show the line; faulthandler does not
                out.append(f"{indent}  {source}\n")
        return "".join(out)


def dumps_with_source_map(obj: Any) -> tuple[bytes, SourceMap]:
    """cloudpickle `obj`, recording where every function it contains was defined."""
    source_map = SourceMap()
    buffer = io.BytesIO()
    _RecordingPickler(buffer, source_map).dump(obj)
    return buffer.getvalue(), source_map


class _RecordingPickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, source_map: SourceMap) -> None:
        super().__init__(file)
        self._source_map = source_map

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            self._source_map.add_code(obj.__code__)
        return super().reducer_override(obj)
