"""`safesteer-interp run`: the whole SafeSteer pipeline on one model, resumable stage by stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safesteer_interp.distill.variants import VARIANTS, variants_help

console = Console()


def run(
    out: Annotated[str, typer.Option("--out", help="run folder; rerunning the command resumes it")] = "runs/safesteer",
    model: Annotated[str, typer.Option("--model", "-m", help="'organism' (or an organism checkpoint folder), or a real "
                                                          "chat model: 'smollm2-135m-instruct', a .gguf or a folder "
                                                          "(HarmBench splits in RUN/splits.json)")]
    = "organism",
    baselines: Annotated[bool, typer.Option(help="also train and evaluate every baseline the model kind runs: "
                                                 + variants_help(runs_on=True))] = False,
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", metavar="NAME", help="train and evaluate this baseline only (repeatable; one of "
                                           f"{', '.join(VARIANTS)}); on a finished run it adds the row")] = None,
    k: Annotated[str | None, typer.Option(help="|S|: a fixed K or 'auto' (default: the reference's 50 on the "
                                               "organism, 20 on a real model)")] = None,
    method: Annotated[str | None, typer.Option(help="how S is elected: 'vote' (the reference), 'mean' or 'mass' "
                                                    "(default: vote on the organism, mass on a real model)")] = None,
    coeff: Annotated[str, typer.Option(help="teacher steering coefficient: 'auto' (the smallest that makes >= 90% "
                                            "of harmless validation prompts refuse) or a number (the reference: 1)")]
    = "auto",
    teacher_positions: Annotated[str, typer.Option(help="where the teacher steers: 'all' tokens (the reference), "
                                                        "'prompt' tokens only, 'last' prompt token, or 'auto' "
                                                        "(chosen on validation)")]
    = "auto",
    horizon: Annotated[int, typer.Option(min=1, help="answer positions scored when electing S (the reference's "
                                                     "scripts: 7)")] = 5,
    n_prompts: Annotated[int, typer.Option(min=1, help="harmful training prompts")] = 100,
    samples: Annotated[int, typer.Option(min=1, help="rollouts per prompt")] = 8,
    epochs: Annotated[int, typer.Option(min=1, help="distillation epochs over the prompts (the reference's 1 is "
                                                    "also the best on the organism's validation split)")] = 1,
    lr: Annotated[float | None, typer.Option(help="learning rate (default: the trainer's LoRA default on the organism, "
                                                  "pipeline.REAL_LR on a real model)")] = None,
    seed: int = 42,
    answer_lengths: Annotated[str | None, typer.Option(
        help="real models: 'measured' (each evaluation set's answers cut where its verdicts are decided, "
             "docs/speed.md: the default of a new run) or 'fixed' (every set at 64 tokens, as every run before; the "
             "default when resuming such a run)")] = None,
    until: Annotated[str | None, typer.Option(help="stop after this stage (direction, tokens, train, eval, report); "
                                                   "rerunning without it resumes")] = None,
) -> None:
    """direction -> tokens -> train -> eval -> report, into one run folder (see RUN/report.html)."""
    from safesteer_interp.core.models import is_organism  # lazy: transformers (slow CLI start-up)
    from safesteer_interp.direction.artifact import check_positions  # lazy: torch (slow CLI start-up)
    from safesteer_interp.pipeline import resumed_lengths, run_config, run_pipeline  # lazy: torch (slow start-up)
    from safesteer_interp.tokens.vote import VoteConfig  # lazy: torch (slow CLI start-up)

    check_positions(teacher_positions, "--teacher-positions", auto=True)  # before the run folder is touched
    organism = is_organism(model)
    lengths = answer_lengths or resumed_lengths(out)
    cfg = run_config(model, teacher_positions=teacher_positions, method=method,
                     k=(k if k == "auto" else _int(k, "--k")) if k else None, lr=lr, seed=seed,
                     baselines=True if baselines else list(baseline or []) or False, horizon=horizon,
                     coeff=coeff if coeff == "auto" else float(coeff), n_prompts=n_prompts, samples=samples,
                     distill={"epochs": epochs},
                     # run_config's default ("measured") unless given, or kept from the run folder being resumed
                     **({} if organism or not lengths else {"eval_lengths": lengths}))
    VoteConfig(k=cfg.k, method=cfg.method)  # a bad --k / --method fails before the run folder is touched
    from safesteer_interp.report.sections import with_training_time  # lazy: matplotlib (slow CLI start-up)

    summary = run_pipeline(out, cfg, log=lambda line: console.print(line, highlight=False, markup=False), until=until)
    if not summary:
        console.print(f"stopped after {until}; rerun without --until to go on: {out}")
        return
    where = "held-out test split" if organism else "held-out HarmBench"
    print_summary(with_training_time(Path(out), summary), f"SafeSteer on {model} ({where})")
    console.print(f"report: {out}/report.html")


COLUMNS = {"gap_refusal_rate": "gap\nrefusal", "gap_refusal_rate_strict": "coherent\nrefusal",
           "gap_refusal_rate_sampled": "sampled\nT=1", "refused_category_refusal_rate": "refused\nrefusal",
           "over_refusal_rate": "over-\nrefusal", "helpfulness": "helpful-\nness", "capability_mean": "capa-\nbility",
           "harmless_kl": "harmless\nKL", "train_seconds": "train\ns"}


def print_summary(summary: dict, title: str) -> None:
    """One row per model; a column only where some model has a value (the organism has no helpfulness, a real model
    no refused category)."""
    keys = [k for k in COLUMNS if any(r.get(k) is not None for r in summary.values())]
    table = Table(title=title)
    # the model names are the row keys: never cut them ("safesteer-binned" vs "safesteer")
    table.add_column("model", no_wrap=True, min_width=16)
    for key in keys:
        table.add_column(COLUMNS[key], justify="right")
    for name, r in summary.items():
        table.add_row(name, *(_fmt(r.get(key)) for key in keys))
    console.print(table)


def _int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an integer or 'auto'", param_hint=option) from None


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
