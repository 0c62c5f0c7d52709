"""Report pages: report.md (Markdown, for a pull request or a paper's notes) and report.html
(one self-contained file: its plots are embedded PNGs, it loads nothing), for a study or for
one run, plus metrics.json with every number the pages show."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import yaml

from testbed.analysis import compare, plots, repro
from testbed.analysis.metrics import HEADLINE, METRICS, run_metrics
from testbed.analysis.partial import summary_of
from testbed.errors import InputError
from testbed.results import write_atomic, write_json

CSS = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.warn{color:#a40}.note{color:#555;font-size:12px}h2{margin-top:1.6em}"""


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i else ""}">{html.escape(c)}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def _md_to_rows(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln.strip().strip("|").split(" | ") for ln in md.splitlines()]
    return [c.strip() for c in lines[0]], [[c.strip() for c in ln] for ln in lines[2:]]


# ---------------------------------------------------------------- studies

def _saturated_runs(study_dir: Path, runs: list[dict]) -> str | None:
    """A warning naming the runs during which the machine's CPUs were saturated long enough
    to distort their times (summary.json's host block), or None."""
    hit = []
    for r in runs:
        try:
            host = summary_of(study_dir / r["run_dir"]).get("host") or {} if r.get("run_dir") else {}
        except InputError:
            continue
        if host.get("warning"):
            hit.append(f"{r['arm']} #{r['repetition']} ({host['saturated_s']:.0f} s)")
    if not hit:
        return None
    return (f"**Warning:** the machine's CPUs were at least 90 % busy for long stretches in {len(hit)} of "
            f"{len(runs)} runs ({', '.join(hit)}): their times may measure the machine rather than the network.")


def study_report(study_dir: Path, out: Path, reproduces: dict | None = None, claims_from: str = "") -> dict:
    """`reproduces`: the claims to judge (default: those the study was run with, in study.yaml);
    `claims_from`: where they were read, said under the verdict."""
    index, sides = compare.study_sides(study_dir)
    if not reproduces:
        reproduces, claims_from = _claims(study_dir), "the claims the study was run with (study.yaml)"
    claims = repro.rows(reproduces, sides) if reproduces else []
    wall = sum(r.get("wall_s") or 0 for r in index["runs"]) or None
    published = repro.markdown(reproduces, claims, wall, claims_from) if reproduces else []
    arms = list(sides.values())
    base, variants = arms[0], arms[1:]
    first = ["| metric | variant | baseline | variant value | difference | 95 % CI of the difference |",
             "|---|---|---:|---:|---:|---:|"]
    per_variant = {}
    for v in variants:
        rows = compare.table(base, v)
        per_variant[v.label] = rows
        if not v.runs:
            first.append(f"| - | {v.label} | - | no usable run | - | - |")
            continue
        for r in rows:
            if r["metric"] in HEADLINE:
                d, ci = compare.diff_cells(r["difference"], r["unit"])
                first.append(f"| {r['metric']} | {v.label} | {compare.cell(r['baseline'], r['unit'])} | "
                             f"{compare.cell(r['variant'], r['unit'])} | {d} | {ci} |")
    failed = [r for r in index["runs"] if r["status"] not in compare.USABLE]
    note = compare.method_note(base, *variants) if variants else ""
    busy = _saturated_runs(study_dir, index["runs"])
    md = [f"# {index['study']}: controlled vs real-world", "",
          f"Study directory `{study_dir.name}`; seed {index['seed']}; {index['repetitions']} repetition(s) per arm; "
          f"status: {index['status']}.", "", *([busy, ""] if busy else []), *published, "## Controlled vs real-world", "", *first, "", note, ""]
    if failed:
        md += ["## Runs not in the figures", "", "| arm | repetition | status | why |", "|---|---:|---|---|",
               *[f"| {r['arm']} | {r['repetition']} | {r['status']} | {(r.get('error') or '-')[:200]} |"
                 for r in failed], ""]
    for v in variants:
        md += [f"## {base.label} vs {v.label}: every metric", "",
               compare.markdown_table(per_variant[v.label], base.label, v.label), ""]
    md += ["## Arms", "", *[f"- **{a['name']}**: {a['description'] or '-'}" for a in index["arms"]], "",
           "## Metrics", "", *[f"- `{k}` ({u}): {m}" for k, (u, m) in METRICS.items()], ""]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.md", "\n".join(md))

    run_dirs = {s.label: [study_dir / r["run_dir"] for r in index["runs"]
                          if r["arm"] == s.label and r["status"] in compare.USABLE and r.get("run_dir")] for s in arms}
    parts = [f"<h1>{html.escape(index['study'])}: controlled vs real-world</h1>",
             f"<p>{html.escape(md[2])}</p>",
             *([f"<p class=\"warn\">{html.escape(busy.replace('**', ''))}</p>"] if busy else []),
             *_published_html(published),
             "<h2>Controlled vs real-world</h2>",
             _html_table(*_md_to_rows("\n".join(first))), f"<p class=\"note\">{html.escape(note)}</p>",
             _img(plots.differences(base, variants) if variants else None, "differences from the baseline"),
             "<h2>Completion times</h2>", _img(plots.completion_cdfs(arms), "completion time CDFs"),
             "<h2>Progress and population</h2>", _img(plots.progress_population(arms, run_dirs), "progress"),
             "<h2>Bytes by group</h2>", _img(plots.grouped_bars(arms, "bytes_up", 1e-6, "MB uploaded"), "bytes up"),
             _img(plots.grouped_bars(arms, "bytes_down", 1e-6, "MB downloaded"), "bytes down")]
    bills = plots.grouped_bars(arms, "bill", 1.0, "money")
    if bills:
        parts += ["<h2>Bills</h2>", _img(bills, "bills by group")]
    util = plots.utilisation(arms)
    if util:
        parts += ["<h2>Link utilisation</h2>", _img(util, "link utilisation")]
    if failed:
        parts += ["<h2 class=\"warn\">Runs not in the figures</h2>", _html_table(["arm", "repetition", "status", "why"], [
            [r["arm"], str(r["repetition"]), r["status"], (r.get("error") or "-")[:200]] for r in failed])]
    for v in variants:
        parts += [f"<h2>{html.escape(base.label)} vs {html.escape(v.label)}: every metric</h2>",
                  _html_table(*_md_to_rows(compare.markdown_table(per_variant[v.label], base.label, v.label)))]
    write_atomic(out / "report.html", _page(f"{index['study']} study", parts))
    data = {"study": index["study"], "status": index["status"], "method": note,
            "arms": {s.label: {"runs": {r: m for r, m in s.runs.items()}, "skipped": s.skipped,
                               "aggregate": {k: compare.aggregate(s, k).as_dict() for k in s.metric_names()}}
                     for s in arms},
            "differences": per_variant,
            "reproduction": {"paper": reproduces["paper"], "verdict": repro.overall(claims), "claims": claims,
                             "runs_wall_s": wall} if reproduces else None,
            "report_md": str(out / "report.md"), "report_html": str(out / "report.html")}
    write_json(out / "metrics.json", data)
    return data


def _claims(study_dir: Path) -> dict | None:
    path = study_dir / "study.yaml"
    if not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("reproduces")


def _published_html(md: list[str]) -> list[str]:
    """The published-vs-measured section of report.md, as HTML (its paragraphs and table)."""
    if not md:
        return []
    table = [ln for ln in md if ln.startswith("|")]
    text = [ln for ln in md[1:] if ln and not ln.startswith("|")]
    return ["<h2>Published vs measured</h2>", *[f"<p>{html.escape(t.replace('**', ''))}</p>" for t in text[:-1]],
            _html_table(*_md_to_rows("\n".join(table))), f"<p><b>{html.escape(text[-1].replace('**', ''))}</b></p>"]


# ---------------------------------------------------------------- one run

def run_report(run_dir: Path, out: Path, pngs: list[Path]) -> dict:
    summary = summary_of(run_dir)
    m = run_metrics(run_dir)
    names = compare.order(set(m["metrics"]))
    rows = [[k, compare.fmt(m["metrics"][k], compare.unit(k))] for k in names]
    md = [f"# {summary['run_id']}", "", f"Experiment {summary.get('experiment')}, status **{summary['status']}**"
          + (" (partial: " + str(summary.get("error")) + ")" if summary.get("partial") else "") + ".", "",
          *([f"**Warning:** {(summary.get('host') or {}).get('warning')}.", ""]
            if (summary.get("host") or {}).get("warning") else []),
          "| metric | value |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows], "",
          "Completion times are from each peer's arrival, at 1 s sampling resolution.", ""]
    peer_rows = [[p["name"], p["group"], p["client"], "yes" if p["completed"] else "no",
                  "-" if p.get("completion_s") is None else f"{p['completion_s']:.1f}",
                  compare.fmt(p.get("bytes_up"), "bytes"), compare.fmt(p.get("bytes_down"), "bytes")]
                 for p in summary["peers"]]
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.md", "\n".join(md))
    parts = [f"<h1>{html.escape(summary['run_id'])}</h1><p>{html.escape(md[2])}</p>",
             _html_table(["metric", "value"], rows),
             _html_table(["peer", "group", "client", "done", "download s", "up", "down"], peer_rows),
             *[_img(p.read_bytes(), p.stem) for p in pngs]]
    write_atomic(out / "report.html", _page(summary["run_id"], parts))
    data = {**m, "report_md": str(out / "report.md"), "report_html": str(out / "report.html")}
    write_json(out / "metrics.json", data)
    return data


def dumps(data) -> str:
    return json.dumps(data, indent=1, default=str)
