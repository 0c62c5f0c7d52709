"""What CI systems read from a regression check: JUnit XML (one test case per metric; the
element and attribute set of Jenkins' junit-10.xsd, which GitLab, GitHub Actions reporters and
Jenkins all accept) and a Markdown summary for a pull-request comment."""
from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone

from testbed.analysis.regress import Verdict


@dataclass
class Report:
    experiment: str
    baseline: str
    verdicts: list[Verdict]
    warnings: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    alpha: float = 0.05

    def as_dict(self) -> dict:
        return {"experiment": self.experiment, "baseline": self.baseline, "warnings": self.warnings,
                "runs": self.runs, "regressed": [v.metric for v in self.verdicts if v.regressed],
                "verdicts": [v.as_dict() for v in self.verdicts]}


def junit_xml(r: Report) -> str:
    failures = sum(v.regressed for v in r.verdicts)
    suites = ET.Element("testsuites", name=f"testbed regress {r.experiment}", tests=str(len(r.verdicts)),
                        failures=str(failures), errors="0")
    suite = ET.SubElement(suites, "testsuite", name=f"swarm.{r.experiment}", tests=str(len(r.verdicts)),
                          failures=str(failures), errors="0", skipped="0", time="0",
                          timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                          hostname=socket.gethostname())
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="baseline", value=r.baseline)
    for i, w in enumerate(r.warnings):
        ET.SubElement(props, "property", name=f"warning{i + 1}", value=w)
    for v in r.verdicts:
        case = ET.SubElement(suite, "testcase", name=v.metric, classname=f"swarm.{r.experiment}", time="0")
        if v.regressed:
            f = ET.SubElement(case, "failure", message=v.reason, type="regression")
            f.text = f"baseline: {v.baseline}\ncandidate: {v.candidate}"
        out = ET.SubElement(case, "system-out")
        out.text = v.reason
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def markdown(r: Report) -> str:
    bad = [v for v in r.verdicts if v.regressed]
    head = (f"### Swarm regression check: {r.experiment} — " +
            (f"**{len(bad)} regression(s)**: {', '.join(v.metric for v in bad)}" if bad else "**no regression**"))
    rows = ["| metric | worse if | baseline (mean) | candidate (mean) | change | p (one-sided Welch) | verdict |",
            "|---|---|---:|---:|---:|---:|---|"]
    for v in r.verdicts:
        change = "-" if v.change is None else f"{v.change * 100:+.1f} %"
        p = "-" if v.p_value is None else f"{v.p_value:.3g}"
        mean = lambda x: "-" if x is None else f"{x:.4g}"    # noqa: E731
        rows.append(f"| {v.metric} | {v.worse} | {mean(v.baseline_mean)} ({len(v.baseline)}) | "
                    f"{mean(v.candidate_mean)} ({len(v.candidate)}) | {change} | {p} | "
                    f"{'REGRESSED' if v.regressed else 'ok'} |")
    tol = sorted({f"{v.tolerance * 100:.0f} %" for v in r.verdicts if v.metric != "runs_complete"})
    lines = [head, "", *rows, "",
             f"A metric regresses when its mean is worse than the baseline's by more than the tolerance "
             f"({', '.join(tol)}) and a one-sided Welch t-test finds it significant (p < {r.alpha:g}); a run that "
             f"does not complete is a regression. "
             f"Baseline: `{r.baseline}`."]
    lines += [f"> warning: {w}" for w in r.warnings]
    return "\n".join(lines) + "\n"
