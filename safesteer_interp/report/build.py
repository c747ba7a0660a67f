"""A run's report, `RUN/report.md` and a self-contained `RUN/report.html`, built from whatever stages have run.

The sections (`sections`) read the stages' artifacts into neutral blocks; the renderers (`blocks`) write them as
Markdown and HTML. `compare_runs` puts several runs' summaries on one trade-off table and plot.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from safesteer_interp.core.artifacts import atomic_path
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.stage import read_summary
from safesteer_interp.report.blocks import Heading, Image, Para, Table, render_html, render_markdown
from safesteer_interp.report.plots import compare_tradeoff
from safesteer_interp.report.sections import (
    notes,
    ordered,
    section_analysis,
    section_attacks,
    section_direction,
    section_samples,
    section_time,
    section_tokens,
    section_tradeoff,
    section_training,
    table_columns,
    tradeoff_table,
    with_training_time,
)


def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- entry points
def build_report(run: str | Path) -> dict[str, Path]:
    """Write RUN/report.md, RUN/report.html and RUN/report/*.png from whatever stages exist."""
    run = Path(run)
    if not run.is_dir():
        raise SafeSteerError(f"run folder {run} does not exist; pass a folder written by `safesteer-interp run`")
    assets = run / "report"
    assets.mkdir(exist_ok=True)
    blocks = (section_tradeoff(run, assets) + section_direction(run) + section_tokens(run)
              + section_training(run, assets) + section_attacks(run, assets) + section_samples(run)
              + section_analysis(run) + section_time(run))
    title = f"SafeSteer report: {run.resolve().name}"
    stamp = f"built {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from {run.resolve()}"
    md = _write_text(run / "report.md", render_markdown(title, [Para(stamp), *blocks], run))
    page = _write_text(run / "report.html", render_html(title, blocks, stamp))
    return {"markdown": md, "html": page, "assets": assets}


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """The shortest path tails that tell the runs apart ('run' for one folder, 'a/run' and 'b/run' for two)."""
    parts = [Path(r).resolve().parts for r in runs]
    for k in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise SafeSteerError("the same run folder is given twice; pass each run once")


def compare_runs(runs: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    """One trade-off table and one plot across runs: OUT/compare.md, compare.html, compare.png, compare.json."""
    if not runs:
        raise SafeSteerError("compare needs at least one run folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    summaries = {label: ordered(with_training_time(Path(r), read_summary(r))) for label, r in zip(labels, runs)}
    entries = [entry for summary in summaries.values() for entry in summary.values()]
    columns = table_columns(entries)  # every run's rows under one header: the columns any run fills
    rows = [row for label, summary in summaries.items() for row in tradeoff_table(summary, label, columns).rows]
    table = Table(tradeoff_table({}, "", columns).header, rows)
    plot = compare_tradeoff(summaries, out / "compare.png")
    blocks = [Heading("Trade-off across runs"), table, *(Para(f"Note: {note}") for note in notes(entries)),
              Image(plot, "Safety vs capability across runs")]
    title = f"SafeSteer comparison of {len(runs)} runs"
    _write_text(out / "compare.md", render_markdown(title, blocks, out))
    _write_text(out / "compare.html", render_html(title, blocks, ", ".join(str(r) for r in runs)))
    _write_text(out / "compare.json", json.dumps(summaries, indent=2, ensure_ascii=False) + "\n")
    return {"markdown": out / "compare.md", "html": out / "compare.html", "plot": plot, "json": out / "compare.json"}


__all__ = ["build_report", "compare_runs", "run_labels"]
