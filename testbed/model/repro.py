"""What a study reproduces: the paper, how the setup was scaled down, and each published
claim as a test on measured metrics. The report puts every claim beside what was measured
and gives a verdict in words (reproduced, partly, not).

    reproduces:
      paper: "Kumar, R. and Ross, K. W. (2006). Peer-assisted file distribution: ..."
      scaled: "6 leechers instead of ...: one 2-core machine runs ..."
      claims:
        - claim: no swarm finishes before the minimum distribution time
          source: Section 2, Theorem 1
          published: T_min / T <= 1
          metric: kumar_ross_efficiency       # a metric of the report (name[group] for a group)
          test: {op: "<=", value: 1, every_run: true}

A test compares one number per run with `value`: the metric itself, or the metric `minus`
or `over` another metric of the same run, or (with `versus: ARM`) the arm's value less the
same value of another arm in the same repetition (paired), or over it with `relative: true`.
`op` is one of > >= < <= or ~ (within `tolerance`, a relative share, of `value`).
Nothing here touches the machine; the claims do not enter the study's digest (they judge
runs, they do not make them), so a claim can be corrected and the report made again.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from testbed.analysis.names import GROUP_METRICS, METRICS, PLAIN_METRICS
from testbed.errors import InputError
from testbed.model.fields import Strict

OPS = (">", ">=", "<", "<=", "~")


class Test(Strict):
    op: Literal[">", ">=", "<", "<=", "~"]
    value: float = Field(allow_inf_nan=False)
    tolerance: float = Field(default=0.25, gt=0, le=10, allow_inf_nan=False)   # for ~: |mean - value| <= tol x |value|
    every_run: bool = False       # the test holds for every run, not for the mean


class Claim(Strict):
    claim: str = Field(min_length=1, max_length=300)
    source: str = Field(min_length=1, max_length=200)     # section, figure or table of the paper
    published: str = Field(min_length=1, max_length=200)  # the published value or statement
    metric: str
    minus: str | None = None
    over: str | None = None
    versus: str | None = None            # another arm: a paired per-repetition difference (or ratio)
    relative: bool = False               # with versus: the ratio arm / versus instead of the difference
    arms: list[str] | None = Field(None, min_length=1)   # where the claim is judged; default every arm (but `versus`)
    test: Test

    @model_validator(mode="after")
    def _one_transform(self):
        if self.minus and self.over:
            raise ValueError("give either 'minus' or 'over', not both")
        if self.relative and not self.versus:
            raise ValueError("'relative' needs 'versus' (the arm the ratio is taken against)")
        if self.versus and self.arms and self.versus in self.arms:
            raise ValueError(f"'versus: {self.versus}' is also in 'arms': an arm compared with itself")
        if self.test.op == "~" and self.test.value == 0:
            raise ValueError("test: '~' is relative to the value, so the value cannot be 0 (use < or >)")
        return self


class Reproduces(Strict):
    paper: str = Field(min_length=1, max_length=500)   # the citation
    scaled: str = ""                                   # how and why the setup is scaled down
    claims: list[Claim] = Field(min_length=1)


def check(rep: Reproduces, groups: dict[str, set[str]], where: str) -> None:
    """Every claim names arms the study has, and metrics the report computes for them: a
    group metric's group exists in every arm the claim reads (`groups`: arm -> peer groups)."""
    arms = list(groups)
    for i, c in enumerate(rep.claims):
        at = f"{where}.claims[{i}]"
        for a in [*(c.arms or []), *([c.versus] if c.versus else [])]:
            if a not in arms:
                raise InputError(f"{at}: the study has no arm '{a[:40]}' (arms: {', '.join(arms)})")
        read = [*(c.arms or [a for a in arms if a != c.versus]), *([c.versus] if c.versus else [])]
        for key in ("metric", "minus", "over"):
            name = getattr(c, key)
            if name is not None:
                _check_metric(name, read, groups, f"{at}.{key}")


def _check_metric(name: str, arms: list[str], groups: dict[str, set[str]], at: str) -> None:
    s, _, rest = name.partition("[")
    if s not in METRICS:
        raise InputError(f"{at}: '{name[:60]}' is not a metric of the report (known: {', '.join(METRICS)})")
    group = rest[:-1] if rest.endswith("]") else None
    if rest and group is None:
        raise InputError(f"{at}: '{name[:60]}': a group is written name[group]")
    if group is not None and s in PLAIN_METRICS:
        raise InputError(f"{at}: '{s}' has no per-group form; write it without [{group[:20]}]")
    if group is not None and s in GROUP_METRICS:
        missing = [a for a in arms if group not in groups[a]]
        if missing:
            raise InputError(f"{at}: '{name[:60]}': arm '{missing[0]}' has no peer group '{group[:20]}' "
                             f"(its groups: {', '.join(sorted(groups[missing[0]]))})")
