"""`junit.xml`: the run for CI test viewers.

One ``<testsuite>`` per model run (inside ``<testsuites>``), one ``<testcase>`` per `CheckResult`, named by
its label and classed ``conformance.<model>.<check>``. JUnit knows passed, failed and skipped; the five
statuses map onto them so that every CI viewer shows what matters:

- FAIL: ``<failure>`` with its reasons, deviations and traceback;
- WARN: a passed test case (it holds here) marked by a ``conformance.status=WARN`` property and a
  ``<system-out>`` that starts with ``WARN:`` and its reasons (the Trainium difference), which GitLab,
  Jenkins and GitHub test reporters show beside the test;
- UNSUPPORTED: ``<skipped type="UNSUPPORTED">`` whose message starts with ``UNSUPPORTED:`` and names the
  refusal (the model declined the configuration: not run to the end, not a failure);
- SKIP: ``<skipped type="SKIP">`` with its reason.

Every test case has the ``conformance.status`` property, its deviation ids (``conformance.deviations``)
and a ``<system-out>`` with its figures, tolerance and cited deviations; the suite's properties carry the
run's verdict and every status count. Characters XML 1.0 cannot hold (control characters from a
traceback) are replaced by ``?``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from conformance.results import CheckResult, RunResults, Status

from .figures import DEVIATIONS_DOC, deviation_title, format_configuration, format_figures, headline, verdict

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """`text` with the characters XML 1.0 forbids replaced."""
    return _NOT_XML.sub("?", text)


def render_junit(run: RunResults) -> str:
    """The JUnit XML document, UTF-8 declared, indented."""
    counts = run.counts()
    totals = {
        "tests": str(len(run.results)),
        "failures": str(counts[Status.FAIL.value]),
        "errors": "0",
        "skipped": str(counts[Status.SKIP.value] + counts[Status.UNSUPPORTED.value]),
        "time": _seconds(run.seconds),
    }
    suites = ET.Element("testsuites", name="nxd-scaffold conformance", **totals)
    suite = ET.SubElement(suites, "testsuite", name=xml_text(f"conformance.{run.model_type}"), **totals)
    properties = ET.SubElement(suite, "properties")
    header = {"model_type": run.model_type, "package_dir": run.package_dir, "profile": run.profile}
    header["backend"] = run.backend
    header["verdict"] = verdict(run)
    header["headline"] = headline(run)
    header.update({f"count.{status}": str(count) for status, count in counts.items()})
    header.update({f"environment.{key}": value for key, value in sorted(run.environment.items())})
    for name, value in header.items():
        ET.SubElement(properties, "property", name=xml_text(name), value=xml_text(str(value)))
    for result in run.results:
        _testcase(suite, run.model_type, result)
    ET.indent(suites, space="  ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _testcase(suite: ET.Element, model_type: str, result: CheckResult) -> None:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=xml_text(f"conformance.{model_type}.{result.check}"),
        name=xml_text(result.label),
        time=_seconds(result.seconds),
    )
    reasons = "\n".join(f"- {reason}" for reason in result.reasons) or "- (no reason recorded)"
    first = result.reasons[0] if result.reasons else f"{result.check} {result.status}"
    marks = ET.SubElement(case, "properties")
    ET.SubElement(marks, "property", name="conformance.status", value=result.status.value)
    if result.deviations:
        ET.SubElement(marks, "property", name="conformance.deviations", value=" ".join(result.deviations))
    if result.status is Status.FAIL:
        failure = ET.SubElement(case, "failure", message=xml_text(first), type="ConformanceFailure")
        body = reasons + _deviations(result)
        if result.traceback:
            body += "\n\n" + result.traceback.rstrip("\n")
        failure.text = xml_text(body)
    elif result.status in (Status.SKIP, Status.UNSUPPORTED):
        message = f"{result.status.value}: {first}"
        skipped = ET.SubElement(case, "skipped", message=xml_text(message), type=result.status.value)
        skipped.text = xml_text(reasons + _deviations(result))
    out = []
    if result.status is Status.WARN:
        out.append(f"WARN: {first}")
        out.append(f"WARN reasons (passes here; Trainium differs):\n{reasons}")
    out += [f"status: {result.status}", f"configuration: {format_configuration(result.configuration)}"]
    if result.reasons and result.status is Status.PASS:
        out.append(f"notes:\n{reasons}")
    if result.figures:
        out.append(f"figures: {format_figures(result.figures, 4000)}")
    if result.tolerance:
        out.append(f"tolerance: {result.tolerance}")
    deviations = _deviations(result).strip()
    if deviations:
        out.append(deviations)
    ET.SubElement(case, "system-out").text = xml_text("\n".join(out))


def _deviations(result: CheckResult) -> str:
    if not result.deviations:
        return ""
    cited = "\n".join(f"- {d}: {deviation_title(d)}" for d in result.deviations)
    return f"\nbackend deviations ({DEVIATIONS_DOC}):\n{cited}"


def _seconds(seconds: float) -> str:
    return f"{seconds:.3f}"
