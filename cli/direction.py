"""`safesteer-interp direction`: stage 1, find and select the refusal direction, write RUN/direction/."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from safesteer_interp.cli import options
from safesteer_interp.cli.options import DeviceOption, DtypeOption, ModelOption, PresetOption
from safesteer_interp.presets import resolve

console = Console()


def direction(
    out: Annotated[str, typer.Option("--out", help="run folder (RUN); writes RUN/direction/")],
    preset: PresetOption = None,
    harmful: Annotated[str | None, typer.Option(help="harmful instructions: local JSON/JSONL/CSV with an "
                                                     "`instruction` column, a dataset name (advbench, "
                                                     "jailbreakbench, ...; NAME=PATH for a local copy) or a hub id "
                                                     "(default: the organism's)")] = None,
    harmless: Annotated[str | None, typer.Option(help="harmless instructions, same formats (e.g. alpaca)")] = None,
    n_train: Annotated[int, typer.Option(min=2)] = 128,
    n_val: Annotated[int, typer.Option(min=1)] = 32,
    seed: int = 42,
    prune: Annotated[float, typer.Option(min=0.0, max=0.99, help="drop the last share of layers")] = 0.2,
    kl_max: Annotated[float, typer.Option(help="max harmless KL under ablation")] = 0.1,
    coeff: Annotated[str, typer.Option(help="steering coefficient, or 'auto' for a validation sweep")] = "1.0",
    positions: Annotated[str, typer.Option(help="where the teacher steers: 'all' tokens (reference), 'prompt' tokens "
                                                "only, 'last' prompt token, or 'auto' (the one that refuses best "
                                                "on harmless val)")]
    = "all",
    refusal_tokens: Annotated[str, typer.Option(help="comma-separated refusal opener tokens (default: derived "
                                                     "from the model's own refusals)")] = "",
    refusal_path: Annotated[str, typer.Option(help="auto | reference | aligned | latent: 'aligned' (named variant) "
                                                   "filters prompts by the judge on greedy answers and tunes on "
                                                   "the harmful val prompts the model answers; 'latent' (named "
                                                   "variant) is for a model that refuses nothing yet: harmful "
                                                   "prompts unfiltered, selection by steering; 'auto' takes the "
                                                   "reference where its filter keeps >= 25% of the harmful prompts, "
                                                   "else aligned where greedy answers refuse >= 25%, else latent")]
    = "auto",
    model: ModelOption = None,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
) -> None:
    """Stage 1: difference-in-means refusal direction, selected by ablation / addition / KL scores.

    A preset only picks the model here: n-train/n-val 128/32 and coeff 1.0 are already the reference's values.
    """
    from safesteer_interp.core.models import is_organism  # lazy: transformers, only when the command runs
    from safesteer_interp.direction.select import NothingSurvived  # lazy: torch, only when the command runs
    from safesteer_interp.direction.stage import direction_config, run_direction  # lazy: torch, as above
    from safesteer_interp.pipeline import ORGANISM_DIRECTION  # lazy: torch, as above

    values, preset_record = resolve("direction", preset, model=model)
    model = values["model"]
    config = direction_config(seed, parse_coeff(coeff), n_train=n_train, n_val=n_val, prune=prune, kl_max=kl_max,
                              refusal_tokens=[t for t in refusal_tokens.split(",") if t], positions=positions,
                              refusal_path=refusal_path)
    lm, tok = options.open_model(model, dtype, device or options.default_device())
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        def progress(total: int):
            task = bar.add_task("scoring candidates (ablation, addition, KL)", total=total)
            return lambda: bar.advance(task)

        try:
            meta = run_direction(out, lm, tok, config, model_name=model, harmful=harmful, harmless=harmless,
                                 progress=progress, extra=None if preset is None else {"preset": preset_record})
        except NothingSurvived as err:
            bar.stop()
            print_report(err.report)
            console.print(f"[bold red]no candidate survived[/]; report: {out}/direction/selection_report.json")
            if is_organism(model) and kl_max < ORGANISM_DIRECTION["kl_max"]:
                console.print(f"on the organism the reference's --kl-max removes every candidate (harmless prompts "
                              f"sit far out along r, so ablation changes their first token); `run` uses "
                              f"--kl-max {ORGANISM_DIRECTION['kl_max']} --positions auto (docs/organism.md)",
                              highlight=False)
            raise typer.Exit(3) from err
    print_summary(meta, out)


def parse_coeff(coeff: str) -> float | str:
    """--coeff: a number, or 'auto'."""
    if coeff == "auto":
        return "auto"
    try:
        return float(coeff)
    except ValueError as err:
        raise typer.BadParameter(f"--coeff must be a number or 'auto', not {coeff!r}") from err


def print_report(report: dict) -> None:
    table = Table(title=f"selection filters ({report['candidates']} candidates)")
    table.add_column("filter")
    table.add_column("removed", justify="right")
    for name, count in report["removed_by"].items():
        table.add_row(name, str(count))
    console.print(table)
    for name, (lo, hi) in report["score_ranges"].items():
        console.print(f"{name} score range: [{lo}, {hi}]")


def print_summary(meta: dict, out: str) -> None:
    table = Table(title="refusal direction")
    table.add_column("field")
    table.add_column("value")
    rows = {"layer": meta["layer"], "pos": f"{meta['pos']} ({meta['pos_token']!r})", "coeff": meta["coeff"],
            "teacher positions": meta["positions"] + (f" (auto: {_check(meta['positions_check'])})"
                                                      if meta.get("positions_check") else ""),
            "norm": meta["norm"], "refusal tokens": ", ".join(meta["refusal_tokens"]["tokens"]),
            "path": f"{meta['refusal_path']['path']} ({meta['refusal_path']['why']})",
            "filtered (after/before)": ", ".join(f"{k} {v['after']}/{v['before']}"
                                                 for k, v in meta["filter_counts"].items()),
            "survivors": f"{meta['selection']['survivors']}/{meta['selection']['candidates']}",
            "seconds": meta["seconds"]}
    rows.update({f"held-out {k}": v for k, v in meta["validation"].items() if isinstance(v, int | float)})
    for key, value in rows.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"artifacts: {out}/direction/")


def _check(check: dict) -> str:
    return "; ".join(f"{p} " + "/".join(f"{v:.2f}" for k, v in row.items() if k.endswith("_val"))
                     for p, row in check.items())
