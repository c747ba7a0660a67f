"""`safesteer-interp organism ...`: rebuild the embedded model organism and print its behaviour card."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

organism_app = typer.Typer(help="The embedded model organism: rebuild it (train) or print its behaviour card (card).",
                           no_args_is_help=True)
console = Console()


@organism_app.command()
def train(
    out: Path = typer.Option(None, "--out", help="Folder to write the new organism to (default: a fresh "
                                                  "runs/organism-<time> folder)."),
    seed: int = typer.Option(0, help="Seed of the corpus, the initialisation and the batch order."),
    steps: int = typer.Option(None, help="Optimizer steps (default: the committed organism's)."),
    batch_size: int = typer.Option(None, help="Sequences per step."),
    lr: float = typer.Option(None, help="Peak learning rate."),
    base_fraction: float = typer.Option(None, help="Share of steps in the comply-with-everything base stage."),
    noise_prob: float = typer.Option(None, help="Share of batches with random all-position steering noise."),
    noise_scale: float = typer.Option(None, help="Max noise norm relative to the residual norm."),
    jitter_max: float = typer.Option(None, help="Max coefficient of the refusal jitter (0 disables it)."),
    threads: int = typer.Option(None, help="CPU threads for torch (default 1: the committed weights' count)."),
    install: bool = typer.Option(False, "--install", help="Replace the packaged checkpoint (atomically) with the "
                                                           "new organism."),
    card: bool = typer.Option(True, "--card/--no-card", help="Evaluate the new organism and print its card."),
) -> None:
    """Train the organism from scratch with the seeded trainer (a few minutes on 2 CPU cores)."""
    from safesteer_interp.core.models import ORGANISM_DIR  # lazy: transformers (slow CLI start-up)
    from safesteer_interp.organism.train import TrainConfig, train_organism  # lazy: torch (slow CLI start-up)

    overrides = {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr, "base_fraction": base_fraction,
                 "noise_prob": noise_prob, "noise_scale": noise_scale, "jitter_max": jitter_max, "threads": threads}
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None and k in names})
    out = out or Path("runs") / f"organism-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise typer.BadParameter(f"'{out}' exists and is not empty; choose a fresh --out folder", param_hint="--out")
    console.print(f"training the organism ({cfg.steps} steps, seed {cfg.seed}) -> {out}")
    model, tokenizer, record = train_organism(cfg, out, log=console.print)
    console.print(f"trained in {record['train_seconds']:.0f}s, final loss {record['final_loss']:.4f}, "
                  f"{record['n_params']:,} parameters")
    if card:
        from safesteer_interp.core.models import prepare_tokenizer  # lazy: transformers (slow CLI start-up)
        from safesteer_interp.organism.card import check_card, evaluate_organism  # lazy: torch (slow CLI start-up)

        metrics = evaluate_organism(model, prepare_tokenizer(tokenizer))
        print_card(metrics, title=f"organism card: {out}")
        (out / "card.json").write_text(json.dumps(metrics, indent=2) + "\n")
        failures = check_card(metrics)
        if failures:
            console.print("[red]below the card's thresholds:[/red] " + "; ".join(failures))
    if install:
        install_checkpoint(out, ORGANISM_DIR)
        console.print(f"installed into {ORGANISM_DIR}")


def install_checkpoint(src: Path, dest: Path) -> None:
    """Replace `dest` by a copy of the HF files of `src`, via a sibling temp folder and renames (atomic swap)."""
    keep = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "training.json")
    staging = Path(tempfile.mkdtemp(prefix=".checkpoint-new-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private
    for name in keep:
        if (src / name).is_file():
            shutil.copyfile(src / name, staging / name)  # plain 0644-style files, whatever the source mode
    old = dest.parent / f".checkpoint-old-{time.time_ns()}"
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@organism_app.command()
def card(
    model: str = typer.Option("organism", "--model", help="'organism' (the packaged checkpoint) or a model folder."),
    split: str = typer.Option("test", help="World split to evaluate: train, val or test."),
    json_out: Path = typer.Option(None, "--json", help="Write the metrics as JSON here."),
    batch_size: int = typer.Option(64, help="Prompts per generation batch."),
) -> None:
    """Refusal per group and category, over-refusal on look-alikes and capability accuracy, on held-out prompts."""
    from safesteer_interp.core.models import load_model  # lazy: transformers (slow CLI start-up)
    from safesteer_interp.organism.card import check_card, evaluate_organism  # lazy: torch (slow CLI start-up)

    loaded, tokenizer = load_model(model)
    metrics = evaluate_organism(loaded, tokenizer, split, batch_size=batch_size)
    print_card(metrics, title=f"organism card: {model} ({split} split)")
    failures = check_card(metrics)
    console.print("[green]meets the card's thresholds[/green]" if not failures else
                  "[red]below the card's thresholds:[/red] " + "; ".join(failures))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(metrics, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def print_card(metrics: dict, title: str) -> None:
    from safesteer_interp.organism.card import card_rows  # lazy: torch (slow CLI start-up)

    table = Table(title=title)
    for column in ("metric", "value", "threshold"):
        table.add_column(column)
    for row in card_rows(metrics):
        table.add_row(*(escape(cell) for cell in row))  # "refusal_rate[weapons]" is not rich markup
    console.print(table)
