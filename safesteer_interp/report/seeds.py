"""Seeds: one recipe run with several seeds, summarised per model and metric as the mean and the range.

A seed changes every random draw of a run (its splits, stage 1's prompts, the rollouts, the sampled answers), so the
range says how much of a result is the draw. Runs must share run_config.json except `seed` and `baselines`: a
different model or recipe is a comparison (`compare`), not a seed. Writes OUT/seeds.{json,md,html,png}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safesteer_interp.core.artifacts import atomic_path, read_json
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.stage import read_summary
from safesteer_interp.report.blocks import Heading, Image, Para, Table, fmt, render_html, render_markdown
from safesteer_interp.report.plots import seeds_plane, selectivity_plane
from safesteer_interp.report.sections import COLUMNS, ordered, with_training_time

NOT_RECIPE = ("seed", "baselines")  # run_config.json fields that may differ between seeds of one recipe


def check_same_recipe(runs: Sequence[Path]) -> dict:
    """The runs' shared run_config.json (less NOT_RECIPE); a one-line error naming the first field that differs."""
    configs = [read_json(Path(r) / "run_config.json", "run config") for r in runs]
    recipe = {k: v for k, v in configs[0].items() if k not in NOT_RECIPE}
    for run, config in zip(runs[1:], configs[1:]):
        for key in sorted(set(recipe) | set(config) - set(NOT_RECIPE)):
            if config.get(key) != recipe.get(key):
                raise SafeSteerError(f"{run}/run_config.json has {key}={config.get(key)!r}, {runs[0]} has "
                                     f"{recipe.get(key)!r}: seeds of one recipe differ only in seed; use `compare`")
    seeds = [c.get("seed") for c in configs]
    if len(set(seeds)) != len(seeds):
        raise SafeSteerError(f"two runs share a seed ({seeds}); pass each seed's run once")
    return {**recipe, "seeds": seeds}


def aggregate(summaries: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """model -> metric -> {mean, min, max, values}: over the runs that evaluated the model (n may be < the runs)."""
    models = ordered({m: None for s in summaries for m in s})
    out: dict[str, dict[str, dict]] = {}
    for model in models:
        entries = [s[model] for s in summaries if model in s]
        out[model] = {}
        for key, _ in COLUMNS:
            values = [float(e[key]) for e in entries if isinstance(e.get(key), int | float)]
            if values:
                out[model][key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
                                   "values": values}
    return out


def _cell(stat: dict | None, digits: int) -> str:
    if stat is None:
        return "–"
    if len(stat["values"]) == 1:
        return fmt(stat["mean"], digits)
    return f"{fmt(stat['mean'], digits)} [{fmt(stat['min'], digits)}, {fmt(stat['max'], digits)}]"


def seeds_table(agg: dict[str, dict[str, dict]]) -> Table:
    """Rows = models, cells = 'mean [min, max]' over the seeds; n = how many seeds evaluated the model."""
    columns = [(k, title) for k, title in COLUMNS if any(k in stats for stats in agg.values())]
    rows = []
    for model, stats in agg.items():
        n = max((len(s["values"]) for s in stats.values()), default=0)
        digits = {"harmless_kl": 4, "train_seconds": 0}
        rows.append([model, str(n)] + [_cell(stats.get(k), digits.get(k, 3)) for k, _ in columns])
    return Table(["model", "seeds"] + [title for _, title in columns], rows)


def seed_runs(runs: Sequence[str | Path], out: str | Path) -> dict[str, Path]:
    """OUT/seeds.json (per-seed values too), seeds.md / .html (the table) and seeds.png (the plane, range bars)."""
    if len(runs) < 2:
        raise SafeSteerError("--seeds needs at least two run folders of one recipe")
    runs = [Path(r) for r in runs]
    recipe = check_same_recipe(runs)
    summaries = [with_training_time(r, read_summary(r)) for r in runs]
    agg = aggregate(summaries)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label = f"{recipe['model']}, seeds {', '.join(map(str, recipe['seeds']))}"
    plot = seeds_plane(agg, out / "seeds.png", label)
    title = f"SafeSteer over {len(runs)} seeds: {recipe['model']}"
    blocks = [Heading("Mean [min, max] over the seeds"),
              Para(f"Runs: {', '.join(str(r) for r in runs)} (seeds {recipe['seeds']}); each seed draws its own "
                   "splits, so each row's held-out behaviours differ between seeds."),
              seeds_table(agg), Image(plot, "Safety against capability, range bars over the seeds")]
    if any("xstest_safe_refusal_rate" in stats for stats in agg.values()):
        selective = selectivity_plane(agg, out / "selectivity.png", label)
        blocks.append(Image(selective, "Refusal of held-out HarmBench against over-refusal on XSTest-safe, range bars "
                                       "over the seeds"))
    record = {"recipe": recipe, "runs": [str(r) for r in runs], "models": agg}
    for name, text in (("seeds.md", render_markdown(title, blocks, out)),
                       ("seeds.html", render_html(title, blocks, ", ".join(map(str, runs)))),
                       ("seeds.json", json.dumps(record, indent=2, ensure_ascii=False) + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return {"markdown": out / "seeds.md", "html": out / "seeds.html", "plot": plot, "json": out / "seeds.json"}


__all__ = ["aggregate", "check_same_recipe", "seed_runs", "seeds_table"]
