"""What a run shows the person who started it: one line per stage, a summary at the end, ``report.html``.

The runner prints a stage's headline numbers (:func:`headline`, from its done marker) when it ends, and
after the run :func:`summary`: where the report is, the three numbers a reader of SPEED came for (the
trained embedder against the untrained one and MiniLM, teacher calls and dollars against an E5-style
pipeline, the wall time) and what to run next. :func:`build` writes ``report.html``: a front page (the
profile, versions, stages with their times and headlines, the local MTEB table, the cost comparison,
the claims table, every figure) followed by each executed notebook rendered by nbconvert, code cells
left out unless asked for. ``speed-repro report RUN`` rebuilds it.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Callable

from .evaluate import released_label, trained_label, untrained_label
from .files import atomic_write_text, read_jsonl
from .profiles import load_run_config
from .registry import STAGES
from .runs import RunPaths


def _f(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _h04(m: dict) -> str:
    j = m.get("judgements", {})
    return (f"{j.get('pairs', 0)} preference pairs from {j.get('lists', 0)} lists, judge self-agreement "
            f"{_f(j.get('self_agreement'), 2)}" + (" (senior = junior)" if m.get("extra", {}).get("unchanged_junior") else ""))


def _h05(m: dict) -> str:
    q = m.get("quality", {}).get("senior_vs_junior", {})
    return f"{m.get('extra', {}).get('examples', 0)} revisions trained on; senior's order-consistent win rate {_f(q.get('consistent_win_rate'), 2)}"


def _h08(m: dict) -> str:
    return "STS avg: " + ", ".join(f"{label} {v[0]:.1f}" for label, v in m.get("sts_average", {}).items())


def _h10(m: dict) -> str:
    rows = m.get("extrapolation", [])
    speed = next((r for r in rows if r["pipeline"].startswith("SPEED")), None)
    e5 = next((r for r in rows if r["pipeline"].startswith("E5-style") and "500,000" in r["pipeline"]), None)
    return f"{m.get('calls', 0)} teacher calls" + (
        f"; at paper scale SPEED {speed['calls']:,} calls ${speed['usd']:,.0f} vs E5-mistral's {e5['calls']:,} "
        f"${e5['usd']:,.0f}" if speed and e5 else "")


def _h11(m: dict) -> str:
    claims = [v.split(":")[0].split(" at ")[0] for v in m.get("claims", {}).values()]  # "undecided at this scale"
    blind = claims.count("readout blind")
    return f"claims: {claims.count('holds')} hold, {claims.count('fails')} fail, {claims.count('undecided')} undecided, " \
           f"{claims.count('not measured')} not measured" + (f", {blind} on a readout blind to the data" if blind else "")


HEADLINES: dict[int, Callable[[dict], str]] = {
    0: lambda m: f"{m.get('models', 0)} models, {m.get('gpus', 0)} GPU(s), pre-flight: {', '.join(m.get('preflight', [])) or 'n/a'}",
    1: lambda m: f"{m.get('tasks', 0)} tasks from {m.get('calls', 0)} teacher calls",
    2: lambda m: f"{m.get('valid', 0)} of {m.get('requested', 0)} seed examples valid",
    3: lambda m: f"{m.get('steps', 0)} SFT steps, loss {_f((m.get('losses') or [[0, None]])[0][1], 2)} -> "
                 f"{_f((m.get('losses') or [[0, None]])[-1][1], 2)} ({m.get('dtype', '')})",
    4: _h04,
    5: _h05,
    6: lambda m: f"{m.get('kept', 0)} of {m.get('requested', 0)} synthetic examples kept",
    7: lambda m: f"{m.get('embedder', {}).get('examples', 0)} rows, {m.get('embedder', {}).get('steps', 0)} steps "
                 f"({m.get('embedder', {}).get('loss', '')})",
    8: _h08,
    9: lambda m: f"{m.get('local_models', 0)} models in the local table",
    10: _h10,
    11: _h11,
}


def headline(stage: int, metrics: dict) -> str:
    """A stage's few numbers worth a terminal line (empty if its marker lacks them)."""
    try:
        return HEADLINES[stage](metrics)
    except (KeyError, TypeError, IndexError, ValueError):
        return ""


def summary(run: RunPaths, wall_s: float | None = None) -> str:
    """The end of a run, in a few lines: the report, the three numbers, what to run next."""
    lines = [f"report: {run.root / 'report.html'}"]
    avg = run.read_marker(8).get("metrics", {}).get("sts_average", {})
    if avg and run.config.exists():

        models = load_run_config(run.config).models
        rows = [(f"{models.embedder} trained", avg.get(trained_label(models.embedder))),
                ("untrained", avg.get(untrained_label(models.embedder))),
                (f"{models.baseline_embedder} as released",
                 avg.get(released_label(models.baseline_embedder)) if models.baseline_embedder else None)]
        lines.append("embedder, STS average (95% interval): " + " vs ".join(
            f"{name} {v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}]" for name, v in rows if v))
    cost = run.read_marker(10).get("metrics", {})
    if cost:
        lines.append(f"teacher: {cost.get('calls', 0)} calls in this run; " + _h10(cost).split("; ", 1)[-1])
    if wall_s is not None:
        lines.append(f"wall time of this invocation: {wall_s / 60:.1f} min")
    lines.append(f"next: open the report; `speed-repro status {run.root}`; `make study` for the larger sweeps")
    return "\n".join(lines)


# ---------------------------------------------------------------- report.html
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.stage{border-top:3px solid #444;margin-top:3em}.fig{display:inline-block;width:48%;vertical-align:top;margin:0 1% 1em 0}
nav a{margin-right:1em}"""


def _table(rows: list[dict], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = cols or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def front_page(run: RunPaths) -> str:
    """The profile, versions, stages, the local MTEB table, cost, claims and every figure."""
    env = _json(run.file("env")) or {}
    timings = {r["stage"]: r for r in read_jsonl(run.logs / "timings.jsonl")} if (run.logs / "timings.jsonl").exists() else {}
    stages = []
    for n, st in STAGES.items():
        mark = run.read_marker(n)
        stages.append({"stage": f"{n:02d} {st.name}", "status": "done" if mark else "not run",
                       "seconds": round(timings[n]["wall_s"]) if n in timings else mark.get("seconds", ""),
                       "headline": headline(n, mark.get("metrics", {})) if mark else ""})
    parts = [f"<h1>speed-repro run: {html.escape(run.root.name)}</h1>",
             f"<p>profile <b>{html.escape(str(env.get('profile', '')))}</b>; run folder {html.escape(str(run.root))}</p>",
             "<nav>" + "".join(f'<a href="#stage-{n:02d}">{n:02d}</a>' for n in STAGES) + '<a href="#figures">figures</a></nav>',
             "<h2>Stages</h2>", _table(stages)]
    results = _json(run.file("results")) or {}
    local = [{**v["row"], "coverage": v.get("coverage", "")} for v in results.get("local", {}).values()]
    parts += ["<h2>Local MTEB tasks</h2><p>main score ×100 per category on the local test-set samples "
              "(the paper's Table 1 reports the full MTEB; see stage 09)</p>", _table(local)]
    cost = _json(run.file("cost")) or {}
    parts += ["<h2>Teacher cost at paper scale</h2>", _table(cost.get("extrapolation", {}).get("rows", []))]
    claims = _json(run.file("claims")) or []
    parts += ["<h2>The claims table</h2>", _table(claims)]
    versions = env.get("versions", {})
    parts += ["<h2>Versions</h2>", _table([{"package": k, "version": v} for k, v in versions.items()])]
    figs = sorted(run.figures.glob("*.png")) if run.figures.exists() else []
    parts.append('<h2 id="figures">Figures</h2>' + "".join(
        f'<div class="fig" id="fig-{f.stem}"><img alt="{f.name}" src="data:image/png;base64,'
        f'{base64.b64encode(f.read_bytes()).decode()}"><br>{html.escape(f.name)}</div>' for f in figs))
    return "\n".join(parts)


def notebook_html(path: Path, include_code: bool = False) -> str:
    """One executed notebook as an HTML fragment (nbconvert's basic template; code cells left out)."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="basic", exclude_input=not include_code, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body


def build(run: RunPaths, include_code: bool = False) -> Path:
    """Write ``report.html`` (atomically): the front page, then every executed stage notebook."""
    sections = []
    for n, st in STAGES.items():
        nb = run.notebooks / st.notebook
        body = notebook_html(nb, include_code) if nb.exists() else "<p>(not run)</p>"
        sections.append(f'<section class="stage" id="stage-{n:02d}"><h2>{n:02d} · {st.name}</h2>{body}</section>')
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>speed-repro {html.escape(run.root.name)}</title>"
            f"<style>{CSS}</style></head><body>{front_page(run)}{''.join(sections)}</body></html>")
    out = run.root / "report.html"
    atomic_write_text(out, page)
    return out


__all__ = ["headline", "summary", "build", "front_page", "notebook_html"]
