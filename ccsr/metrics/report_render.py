"""Markdown and HTML text of the report, from the summary dictionary that ``report.json`` also holds.

Pure string building (no I/O); every name from the file system is escaped. The HTML page has inline
CSS, no scripts and no remote resources; images are relative links into ``report_files/``.
"""

from __future__ import annotations

import html

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child,td.t{text-align:left}th{background:#f4f4f4}
.meta td{text-align:left;border:none;padding:1px 10px 1px 0}.note{color:#555;font-size:13px}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;font-size:12px}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#444}
"""

STD_NOTE = (
    "mean ± G-STD: the mean over images and samples; G-STD is the mean over images of each image's population "
    "standard deviation (ddof 0) over samples. L-STD: per-pixel population std over samples of the RGB output in "
    "[0, 1], averaged over pixels and channels, then over images. Both after a {crop}-pixel border crop; FID is "
    "computed on whole images per sample folder and averaged over samples (no G-STD). ↑ higher is better, "
    "↓ lower is better (pyiqa's metadata)."
)


def fmt(v: float | None) -> str:
    """Paper-style rounding: 4 decimals below 1, 3 below 10, else 2; '–' when not defined."""
    if v is None:
        return "–"
    a = abs(v)
    return f"{v:.4f}" if a < 1 else f"{v:.3f}" if a < 10 else f"{v:.2f}"


def _arrow(meta: dict) -> str:
    return "↓" if meta["lower_better"] else "↑"


def _computed(summary: dict) -> list[str]:
    return [n for n in summary["metrics"] if any(n in r["metrics"] for r in summary["runs"])]


def table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table: one row per run, ``mean ± G-STD`` per metric, then L-STD."""
    names = _computed(summary)
    header = [
        "run",
        "samples",
        "images",
        *[f"{n.upper()} {_arrow(summary['metrics'][n])}" for n in names],
        "L-STD ↓",
    ]
    rows = []
    for r in summary["runs"]:
        cells = [r["label"], str(r["samples"]), str(r["images"])]
        for n in names:
            m = r["metrics"].get(n)
            if m is None:
                cells.append("n/a")
            elif m["g_std"] is None:
                cells.append(fmt(m["mean"]))
            else:
                cells.append(f"{fmt(m['mean'])} ± {fmt(m['g_std'])}")
        cells.append(fmt(r["l_std"]))
        rows.append(cells)
    return header, rows


def _metric_lines(summary: dict) -> list[tuple[str, str]]:
    out = []
    for n, m in summary["metrics"].items():
        opts = ", ".join(f"{k}={v!r}" for k, v in m["options"].items())
        desc = f"pyiqa '{m['pyiqa_name']}'{f' ({opts})' if opts else ''}, {m['mode']}, {m['level']}-level: {m['note']}"
        out.append((f"{n} {_arrow(m)}", desc))
    return out


def _std_cols(summary: dict) -> list[str]:
    return [n for n in _computed(summary) if summary["metrics"][n]["level"] == "image"]


def markdown(summary: dict, sweep_plot: str | None) -> str:
    header, rows = table(summary)
    md = ["# CCSR evaluation report", ""]
    md += [f"- run folder: `{summary['run_dir']}`", f"- ground truth: `{summary['gt_dir'] or 'none'}`"]
    md += [f"- border crop: {summary['crop']} px, device: {summary['device']}, created {summary['created']}"]
    md += ["- versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    md += ["## Summary", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", STD_NOTE.format(crop=summary["crop"]), "", "## Metrics", ""]
    md += [f"- **{a}**: {b}" for a, b in _metric_lines(summary)]
    md += _not_computed_md(summary)
    if sweep_plot:
        md += ["", "## Metrics against step count", "", f"![metrics against step count]({sweep_plot})"]
    cols = _std_cols(summary)
    for r in summary["runs"]:
        if not r["most_unstable"]:
            continue
        md += ["", f"## Most unstable images: {r['label']}", ""]
        md += ["| rank | image | L-STD | " + " | ".join(f"std {c}" for c in cols) + " | heat map |"]
        md += ["|" + "---|" * (4 + len(cols))]
        for k, u in enumerate(r["most_unstable"], 1):
            stds = " | ".join(fmt(u["std"].get(c)) for c in cols)
            md.append(
                f"| {k} | {u['name']} | {fmt(u['l_std'])} | {stds}{' |' if cols else ''} [png]({u['heatmap']}) |"
            )
        for u in r["most_unstable"]:
            md += ["", f"![{u['name']}]({u['figure']})"]
    return "\n".join(md) + "\n"


def _not_computed_md(summary: dict) -> list[str]:
    md = []
    items = list(summary["not_computed"].items())
    for r in summary["runs"]:
        items += [(f"{n} ({r['label']})", why) for n, why in r["not_computed"].items()]
    if items:
        md += ["", "## Not computed", ""]
        for n, why in items:
            md += [f"- **{n}**:", "", "```", why, "```"]
    failures = [(r["label"], f) for r in summary["runs"] for f in r["failures"]]
    if failures:
        md += ["", "## Inputs that failed in the run (failures.txt; no output to score)", ""]
        md += [f"- {label}: `{f}`" for label, f in failures]
    return md


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def html_page(summary: dict, sweep_plot: str | None) -> str:
    header, rows = table(summary)
    h = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>CCSR evaluation report</title>",
    ]
    h += [f"<style>{_CSS}</style></head><body>", "<h1>CCSR evaluation report</h1>", '<table class="meta">']
    meta = [
        ("run folder", summary["run_dir"]),
        ("ground truth", summary["gt_dir"] or "none"),
        ("border crop", f"{summary['crop']} px"),
        ("device", summary["device"]),
        ("created", summary["created"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())),
    ]
    h += [f"<tr><td><b>{_e(k)}</b></td><td>{_e(v)}</td></tr>" for k, v in meta]
    h += [
        "</table>",
        "<h2>Summary</h2>",
        "<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in header) + "</tr></thead><tbody>",
    ]
    h += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows]
    h += [
        "</tbody></table>",
        f'<p class="note">{_e(STD_NOTE.format(crop=summary["crop"]))}</p>',
        "<h2>Metrics</h2><ul>",
    ]
    h += [f"<li><b>{_e(a)}</b>: {_e(b)}</li>" for a, b in _metric_lines(summary)]
    h.append("</ul>")
    nc = list(summary["not_computed"].items())
    for r in summary["runs"]:
        nc += [(f"{n} ({r['label']})", why) for n, why in r["not_computed"].items()]
    if nc:
        h.append("<h2>Not computed</h2>")
        h += [f"<h3>{_e(n)}</h3><pre>{_e(why)}</pre>" for n, why in nc]
    failures = [(r["label"], f) for r in summary["runs"] for f in r["failures"]]
    if failures:
        h.append(
            "<h2>Inputs that failed in the run</h2><p class=note>From failures.txt: these have no output to score.</p><ul>"
        )
        h += [f"<li>{_e(label)}: <code>{_e(f)}</code></li>" for label, f in failures]
        h.append("</ul>")
    if sweep_plot:
        h += [
            "<h2>Metrics against step count</h2>",
            f'<figure><img src="{_e(sweep_plot)}" alt="metrics against step count">',
        ]
        h.append("<figcaption>Mean over images and samples; error bars: G-STD.</figcaption></figure>")
    cols = _std_cols(summary)
    for r in summary["runs"]:
        if not r["most_unstable"]:
            continue
        vmax = r["most_unstable"][0]["vmax"]
        h += [f"<h2>Most unstable images: {_e(r['label'])}</h2>"]
        h.append(
            f'<p class="note">Ranked by L-STD. Heat maps: per-pixel std over {r["samples"]} samples, colour scale '
            f"0 to {fmt(vmax)} (99.5th percentile, shared by every heat map in this report); bright = unstable.</p>"
        )
        h.append(
            "<table><thead><tr><th>rank</th><th>image</th><th>L-STD</th>"
            + "".join(f"<th>std {_e(c)}</th>" for c in cols)
        )
        h.append("<th>heat map</th></tr></thead><tbody>")
        for k, u in enumerate(r["most_unstable"], 1):
            std = "".join(f"<td>{fmt(u['std'].get(c))}</td>" for c in cols)
            h.append(
                f'<tr><td>{k}</td><td class="t">{_e(u["name"])}</td><td>{fmt(u["l_std"])}</td>{std}'
                f'<td><a href="{_e(u["heatmap"])}">png</a></td></tr>'
            )
        h.append("</tbody></table>")
        for u in r["most_unstable"]:
            h.append(f'<figure><img src="{_e(u["figure"])}" alt="{_e(u["name"])}">')
            h.append(f"<figcaption>{_e(u['name'])}: L-STD {fmt(u['l_std'])}</figcaption></figure>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"
