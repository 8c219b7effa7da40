"""The evaluation as one self-contained HTML page a safety analyst can open and pass on.

Everything is inline (styles, and images as base64 data URIs), so the single file can be mailed or
archived without its folder. Text comes from `metrics.json`, escaped; nothing here computes a figure.
"""

from __future__ import annotations

import base64
import html
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.strip { display: flex; flex-wrap: wrap; gap: 12px; }
.strip figure { margin: 0; width: 48%; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; margin: .6em 0; }
.muted { color: #777; }
"""


@dataclass(frozen=True)
class Picture:
    """An image file to embed, with its caption."""

    path: Path
    caption: str


def data_uri(path: Path) -> str:
    """The file as a `data:` URI, so the page needs nothing beside it."""
    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode('ascii')}"


def fmt(value: Any, kind: str = "num") -> str:
    """A figure for a table cell: n/a for missing values, percentages and counts readable."""
    if value is None:
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "int":
        return f"{int(value):d}"
    if kind == "s":
        return f"{value:.2f} s"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table of already formatted cells (headers are escaped here)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(pic: Picture) -> str:
    return (
        f'<figure><img src="{data_uri(pic.path)}" alt="{html.escape(pic.caption)}">'
        f"<figcaption>{html.escape(pic.caption)}</figcaption></figure>"
    )


def headline_section(m: Mapping[str, Any]) -> str:
    fr, fm, ev = m["frames"], m["frame_metrics"], m["events"]
    rows = [
        [
            "Frames evaluated",
            f"{fr['total']} from {fr['sources']} clip(s): {fr['normal']} normal, {fr['anomalous']} anomalous",
        ],
        ["AUROC (all kinds)", fmt(fm["auroc"])],
        ["Average precision", fmt(fm["average_precision"])],
        ["Operating threshold", f"{fmt(ev['threshold'])} ({html.escape(m['thresholds']['operating']['choice'])})"],
        [
            "Labeled events detected",
            f"{ev['detected_events']} of {ev['labeled_events']} ({fmt(ev['event_recall'], 'pct')})",
        ],
        [
            "False alarms",
            f"{ev['false_alarms']} in {ev['normal_hours'] * 60:.1f} min of normal driving "
            f"({fmt(ev['false_alarms_per_hour'])} per hour)",
        ],
        ["Detection delay (median / max)", f"{fmt(ev['delay_s']['median'], 's')} / {fmt(ev['delay_s']['max'], 's')}"],
    ]
    return "<h2>Headline figures</h2>" + table(["", "value"], rows)


def thresholds_section(m: Mapping[str, Any]) -> str:
    th = m["thresholds"]
    named = [
        (f"calibrated ({th['calibrated']['source']})", th["calibrated"]),
        ("best F1", th["best_f1"]),
        (f"false-positive rate &le; {fmt(th['report_far']['target'], 'pct')}", th["report_far"]),
        (f"operating: {html.escape(th['operating']['choice'])}", th["operating"]),
    ]
    rows = [
        [
            name,
            fmt(p["threshold"]),
            fmt(p["precision"], "pct"),
            fmt(p["recall"], "pct"),
            fmt(p["false_positive_rate"], "pct"),
            fmt(p["f1"]),
            " / ".join(fmt(p[k], "int") for k in ("tp", "fp", "fn", "tn")),
        ]
        for name, p in named
    ]
    headers = ["threshold", "value", "precision", "recall", "false-positive rate", "F1", "TP / FP / FN / TN"]
    note = (
        '<p class="muted">A frame is flagged when its score is above the threshold. Thresholds picked on these '
        "labeled frames (best F1, false-positive target) fit them by construction: confirm a choice on other "
        "labeled clips before relying on it. The full sweep is in <code>sweep.csv</code>.</p>"
    )
    return "<h2>Thresholds</h2>" + table(headers, rows) + note


def kinds_section(m: Mapping[str, Any]) -> str:
    per_kind = m["frame_metrics"]["per_kind"]
    ev_kind = m["events"]["per_kind"]
    baselines = {name: b for name, b in m.get("baselines", {}).items() if "per_kind" in b}
    headers = ["kind", "frames", "model AUROC"]
    headers += [f"{b['label']} AUROC" for b in baselines.values()]
    headers += ["model AP", "frames flagged", "events detected", "median delay"]
    rows = []
    for kind, k in list(per_kind.items()) + [("all kinds", None)]:
        if k is None:
            model_auc, frames = m["frame_metrics"]["auroc"], m["frames"]["anomalous"]
            base = [b["auroc"] for b in baselines.values()]
            ap, rec = m["frame_metrics"]["average_precision"], m["thresholds"]["operating"]["recall"]
            e = m["events"]
            events = f"{e['detected_events']} / {e['labeled_events']}"
            delay = e["delay_s"]["median"]
        else:
            model_auc, frames, ap, rec = k["auroc"], k["frames"], k["average_precision"], k["recall"]
            base = [b["per_kind"].get(kind, {}).get("auroc") for b in baselines.values()]
            e = ev_kind.get(kind)
            events = f"{e['detected']} / {e['labeled']}" if e else "n/a"
            delay = e["delay_s"]["median"] if e else None
        aucs = [model_auc, *base]
        top = max((a for a in aucs if a is not None), default=None)
        cells = [f"<b>{fmt(a)}</b>" if a is not None and a == top else fmt(a) for a in aucs]
        rows.append([html.escape(kind), fmt(frames, "int"), *cells, fmt(ap), fmt(rec, "pct"), events, fmt(delay, "s")])
    intro = (
        "<p>Each kind's frames against all normal frames. Baselines see the same frames: "
        + (
            ", ".join(f"<b>{html.escape(b['label'])}</b>: {html.escape(b['description'])}" for b in baselines.values())
            if baselines
            else "none were run (see notes)"
        )
        + ". The best AUROC of a row is in bold. Frames flagged and events at the operating threshold.</p>"
    )
    return "<h2>Per anomaly kind</h2>" + intro + table(headers, rows)


def events_section(m: Mapping[str, Any], stretches: Sequence[Mapping[str, Any]]) -> str:
    ev = m["events"]
    cfg = ev["config"]
    text = (
        f"<p>Scores are averaged over {cfg['window']} frame(s); an event opens above the threshold "
        f"{fmt(ev['threshold'])} and closes below it minus {cfg['hysteresis']:g}; events closer than "
        f"{cfg['merge_gap_s']:g} s merge and events shorter than {cfg['min_duration_s']:g} s are dropped. "
        "A labeled stretch counts as detected when a detected event overlaps it; the delay runs from its labeled "
        "start to the start of the first such event. A detected event that overlaps no labeled stretch is a false "
        f"alarm. {ev['predicted_events']} event(s) detected in all.</p>"
    )
    rows = [
        [
            html.escape(Path(s["source"]).name),
            html.escape(s["kind"] or "anomaly"),
            f"{s['start_s']:.2f} - {s['end_s']:.2f} s",
            "yes" if s["detected"] else "<b>missed</b>",
            fmt(s["delay_s"], "s"),
        ]
        for s in stretches
    ]
    detail = "<details><summary>Every labeled stretch</summary>" + table(
        ["clip", "kind", "labeled", "detected", "delay"], rows
    )
    return "<h2>Events</h2>" + text + detail + "</details>"


def render_report(
    metrics: Mapping[str, Any],
    stretches: Sequence[Mapping[str, Any]],
    figures: Sequence[Picture],
    timelines: Sequence[Picture],
    strip: Sequence[Picture],
    normal_strip: Sequence[Picture],
    notes: Sequence[str],
    title: str = "Anomaly model evaluation",
) -> str:
    """The whole page as one string."""
    inputs = metrics["inputs"]
    what = html.escape(inputs.get("model") or "no model file (scores CSV only)")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">Model: {what}. Scores: {html.escape(inputs.get("scores_csv") or "")}. '
        f"Labels: {html.escape(', '.join(inputs.get('labels', [])))}.</p>",
    ]
    parts += [f'<div class="note">{html.escape(n)}</div>' for n in notes]
    parts += [headline_section(metrics), kinds_section(metrics), thresholds_section(metrics)]
    parts.append(events_section(metrics, stretches))
    parts.append("<h2>Curves and distributions</h2>" + "".join(figure(p) for p in figures))
    parts.append("<h2>Score over time</h2>" + "".join(figure(p) for p in timelines))
    parts.append("<h2>Most anomalous frames</h2>")
    if strip:
        parts.append(
            "<p>Highest-scoring frames (at most one per second of a clip): the frame, and its reconstruction error "
            "heat map (cells above their normal range, blue to red).</p>"
        )
        parts.append('<div class="strip">' + "".join(figure(p) for p in strip) + "</div>")
    else:
        parts.append('<p class="muted">No frames to show (see notes).</p>')
    if normal_strip:
        parts.append("<h2>Highest-scoring normal frames</h2>")
        parts.append(
            "<p>Frames labeled normal that the model scores highest: what its false alarms look like "
            "(or anomalies the labels missed).</p>"
        )
        parts.append('<div class="strip">' + "".join(figure(p) for p in normal_strip) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: Path, **kwargs: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(**kwargs), encoding="utf-8")
    return path
