"""One self-contained HTML page for a pipeline run: ``rlhf-trl report OUTPUT_DIR [--output report.html]``.

``OUTPUT_DIR`` is the folder of ``rlhf-trl e2e`` holding ``step1_sft/``, ``step2_reward/`` and ``step3_ppo/`` (any
of them) and optionally ``e2e_summary.json``; a single step's output folder works too. For each step the page shows
its lineage and settings (run_info.json), its final metrics and time, its training curves as embedded PNG images
and, for PPO, sample conversations from the first and last logged steps. When the folder holds ``comparison/``
(benchmarks/compare_estimators.py --into-run-dir), the page ends with the estimator comparison: its table and plot.
Everything is inline: the page loads no file and no URL, so it can be mailed or archived alone. All text from the
run is HTML-escaped.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from rlhf_trl.reporting.plots import MetricsError, plot_step
from rlhf_trl.steps import STEPS

SAMPLES_PER_STEP = 4
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #446; } h2 { margin-top: 2em; background: #eef; padding: .3em .5em; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f4f4f8; text-align: left; } td.number { text-align: right; font-family: monospace; }
pre { background: #f6f6f6; padding: .6em; white-space: pre-wrap; word-break: break-all; }
.tables { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.plots img { width: 48%; margin: 0 1% 1em 0; border: 1px solid #ddd; } .note { color: #a40; }
.sample td { vertical-align: top; font-family: monospace; white-space: pre-wrap; }
"""


class ReportError(ValueError):
    """A run folder the report cannot be made from; the message is one line."""


def escape(value) -> str:
    return html.escape(str(value), quote=True)


def format_value(value) -> str:
    """Numbers short and readable, structures as JSON, everything escaped."""
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return escape(value)
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value))
    return escape(value)


def key_value_table(rows: dict, title: str) -> str:
    if not rows:
        return ""
    cells = "".join(
        f'<tr><th>{escape(key)}</th><td class="number">{format_value(value)}</td></tr>' for key, value in rows.items()
    )
    return f"<h3>{escape(title)}</h3><table>{cells}</table>"


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is absent; a broken file is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error.msg})") from error


def embedded_plots(step_dir: Path) -> str:
    """The step's figures as inline base64 PNG images (drawn into a temporary folder, the run is left as is)."""
    with tempfile.TemporaryDirectory(prefix="rlhf-trl-report-") as folder:
        try:
            paths = plot_step(step_dir, destination=folder)
        except MetricsError as error:
            return f'<p class="note">No training curves: {escape(error)}</p>'
        images = [
            f'<img alt="{escape(path.stem)}" src="data:image/png;base64,'
            f'{base64.b64encode(path.read_bytes()).decode("ascii")}">'
            for path in paths
        ]
    if not images:
        return '<p class="note">No training curves: none of the plotted metrics was logged.</p>'
    return '<div class="plots">' + "".join(images) + "</div>"


def read_samples(path: Path) -> tuple[list[dict], int]:
    """Rows of samples.jsonl and the number of lines that could not be read (shown, not silently dropped)."""
    rows, unreadable = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            unreadable += 1
    return rows, unreadable


def samples_section(step_dir: Path) -> str:
    """Sample conversations of the first and the last step that logged samples, side by side in time."""
    path = step_dir / "samples.jsonl"
    if not path.is_file():
        return ""
    rows, unreadable = read_samples(path)
    parts = ["<h3>Sample conversations</h3>"]
    if unreadable:
        parts.append(f'<p class="note">{unreadable} unreadable line(s) of samples.jsonl skipped.</p>')
    if not rows:
        return "".join(parts) + '<p class="note">samples.jsonl holds no samples.</p>'
    steps = sorted({row["step"] for row in rows})
    shown_steps = sorted({steps[0], steps[-1]})
    header = "<tr><th>step</th><th>prompt</th><th>completion</th><th>score</th><th>gold score</th></tr>"
    cells = []
    for step in shown_steps:
        for row in [row for row in rows if row["step"] == step][:SAMPLES_PER_STEP]:
            cells.append(
                f"<tr><td>{escape(step)}</td><td>{escape(row.get('prompt', ''))}</td>"
                f'<td>{escape(row.get("completion", ""))}</td><td class="number">{format_value(row.get("score"))}</td>'
                f'<td class="number">{format_value(row.get("gold_score"))}</td></tr>'
            )
    parts.append(f'<table class="sample">{header}{"".join(cells)}</table>')
    return "".join(parts)


def run_info_section(run_info: dict | None) -> str:
    if run_info is None:
        return '<p class="note">No run_info.json: lineage and settings were not recorded.</p>'
    lineage = {
        "step": run_info.get("step_name"),
        "base model": run_info.get("base_model"),
        "datasets": ", ".join(str(name) for name in run_info.get("datasets") or []),
        "data split": run_info.get("data_split"),
        "LoRA": run_info.get("lora"),
        "wall time (s)": run_info.get("wall_time_s"),
    }
    tables = [
        key_value_table({key: value for key, value in lineage.items() if value is not None}, "Lineage"),
        key_value_table(run_info.get("final_metrics") or {}, "Final metrics"),
        key_value_table(run_info.get("hyperparameters") or {}, "Hyperparameters"),
    ]
    parts = ['<div class="tables">' + "".join(f"<div>{table}</div>" for table in tables if table) + "</div>"]
    if run_info.get("command"):
        parts.append(f"<h3>Command</h3><pre>{escape(run_info['command'])}</pre>")
    return "".join(parts)


def step_section(step_dir: Path, title: str) -> str:
    run_info = read_json(step_dir / "run_info.json")
    parts = [f"<h2>{escape(title)}</h2>", f"<p>Folder: <code>{escape(step_dir)}</code></p>"]
    parts.append(run_info_section(run_info))
    parts.append("<h3>Training curves</h3>" + embedded_plots(step_dir))
    parts.append(samples_section(step_dir))
    return "<section>" + "".join(parts) + "</section>"


def summary_section(summary: dict | None) -> str:
    if not summary or not summary.get("steps"):
        return ""
    header = "<tr><th>step</th><th>wall time (s)</th><th>key metric</th><th>value</th></tr>"
    rows = "".join(
        f'<tr><td>{escape(step.get("step", ""))}</td><td class="number">{format_value(step.get("wall_time_s"))}'
        f'</td><td>{escape(step.get("key_metric", ""))}</td><td class="number">{format_value(step.get("value"))}'
        "</td></tr>"
        for step in summary["steps"]
    )
    total = sum(step.get("wall_time_s") or 0.0 for step in summary["steps"])
    return f"<h2>Pipeline summary</h2><table>{header}{rows}</table><p>Total wall time: {total:.1f} s</p>"


# Folder of a run directory where benchmarks/compare_estimators.py --into-run-dir writes its summary.
COMPARISON_FOLDER = "comparison"


def spread_text(value: dict | None, digits: int) -> str:
    """``mean [min, max]`` of a {mean, min, max} entry of the comparison summary."""
    if not isinstance(value, dict):
        return "&mdash;"
    mean, low, high = (value.get(key) for key in ("mean", "min", "max"))
    if not all(isinstance(number, (int, float)) for number in (mean, low, high)):
        return "&mdash;"
    if low == high:
        return escape(f"{mean:.{digits}f}")
    return escape(f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]")


def comparison_section(run_dir: Path) -> str:
    """The estimator comparison (benchmarks/compare_estimators.py) when ``run_dir/comparison`` holds one: a table
    of held-out gold and reward score, train time and peak memory per algorithm over seeds, and the curves plot."""
    folder = run_dir / COMPARISON_FOLDER
    summary = read_json(folder / "summary.json")
    if summary is None:
        return ""
    algorithms = summary.get("algorithms") or {}
    baseline = summary.get("baseline") or {}
    descriptions = summary.get("descriptions") or {}
    header = (
        "<tr><th>algorithm</th><th>seeds</th><th>held-out gold</th><th>gold &minus; SFT</th>"
        "<th>held-out reward score</th><th>train time (s)</th><th>peak RSS (MiB)</th>"
        "<th>reward hacking (seeds)</th><th>what</th></tr>"
    )
    rows = []
    for name, entry in algorithms.items():
        hacking = entry.get("hacking_seeds")
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{escape(', '.join(map(str, entry.get('seeds', []))))}</td>"
            f'<td class="number">{spread_text(entry.get("gold_score"), 4)}</td>'
            f'<td class="number">{format_value(entry.get("gold_change"))}</td>'
            f'<td class="number">{spread_text(entry.get("score"), 3)}</td>'
            f'<td class="number">{spread_text(entry.get("train_time_s"), 1)}</td>'
            f'<td class="number">{spread_text(entry.get("peak_rss_mib"), 0)}</td>'
            f"<td>{'&mdash;' if hacking is None else escape(', '.join(map(str, hacking)) or 'none')}</td>"
            f"<td>{escape(descriptions.get(name, ''))}</td></tr>"
        )
    parts = [
        "<h2>Estimator comparison</h2>",
        f"<p>Folder: <code>{escape(folder)}</code>. Mean [min, max] over seeds of the final model; reward hacking: "
        "seeds whose held-out reward score rose above the SFT model's while the gold score fell below it.</p>",
    ]
    if "gold_score" in baseline and "score" in baseline:
        parts.append(
            f"<p>SFT model: held-out gold {format_value(baseline['gold_score'])}, reward score "
            f"{format_value(baseline['score'])}.</p>"
        )
    parts.append(f"<table>{header}{''.join(rows)}</table>")
    if summary.get("command"):
        parts.append(f"<pre>{escape(summary['command'])}</pre>")
    curves = folder / "curves.png"
    if curves.is_file():
        encoded = base64.b64encode(curves.read_bytes()).decode("ascii")
        parts.append(
            f'<div class="plots"><img alt="estimator comparison curves" style="width: 98%" '
            f'src="data:image/png;base64,{encoded}"></div>'
        )
    else:
        parts.append('<p class="note">No curves.png next to summary.json.</p>')
    return "<section>" + "".join(parts) + "</section>"


def step_folders(run_dir: Path) -> list[tuple[Path, str]]:
    """The step folders of an e2e run in pipeline order, or the run folder itself when it is a single step."""
    found = [(run_dir / step.folder, step.heading) for step in STEPS if (run_dir / step.folder).is_dir()]
    if found:
        return found
    if (run_dir / "run_info.json").is_file() or (run_dir / "metrics.jsonl").is_file():
        run_info = read_json(run_dir / "run_info.json") or {}
        return [(run_dir, f"Step: {run_info.get('step_name', run_dir.name)}")]
    return []


def build_report(run_dir: str | Path) -> str:
    """The HTML text of the report of ``run_dir``; raises ReportError when it holds no step output."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder")
    folders = step_folders(run_dir)
    if not folders:
        expected = ", ".join(step.folder for step in STEPS)
        raise ReportError(f"{run_dir}: no step output found (expected {expected}, or a step's run_info.json)")
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>rlhf-trl run report</h1><p>Run folder: <code>{escape(run_dir.resolve())}</code>; made {created}.</p>",
        summary_section(read_json(run_dir / "e2e_summary.json")),
        *(step_section(folder, title) for folder, title in folders),
        comparison_section(run_dir),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>rlhf-trl report: {escape(run_dir.name)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default ``<run_dir>/report.html``) and return its path."""
    path = Path(output) if output is not None else Path(run_dir) / "report.html"
    text = build_report(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-trl report", description="Write one self-contained HTML page about a pipeline run."
    )
    parser.add_argument("output_dir", help="run folder of `rlhf-trl e2e` (step1_sft/, ...) or one step's folder")
    parser.add_argument("--output", default=None, help="HTML file to write (default: OUTPUT_DIR/report.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = make_parser().parse_args(argv)
    try:
        path = write_report(arguments.output_dir, arguments.output)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
