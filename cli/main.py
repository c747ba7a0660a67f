"""The `safesteer-interp` Typer app: one command per stage, one-line errors, progress on stderr."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safesteer_interp.cli import options
from safesteer_interp.cli.analyze import analyze
from safesteer_interp.cli.datasets import datasets_command
from safesteer_interp.cli.direction import direction
from safesteer_interp.cli.evaluate import (
    attack_command,
    compare_command,
    eval_command,
    judges_command,
    report_command,
)
from safesteer_interp.cli.organism import organism_app
from safesteer_interp.cli.presets import presets_command
from safesteer_interp.cli.run import run
from safesteer_interp.cli.tokens import tokens
from safesteer_interp.cli.train import train
from safesteer_interp.errors import SafeSteerError

app = typer.Typer(help="SafeSteer, inspectable: refusal directions, safety tokens, localized distillation.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="'organism', a local folder, a hub name, "
                                                             "or 'tiny-random' (a random Qwen2 for smoke tests)")]


@app.command()
def smoke(out: Annotated[str, typer.Option(help="run folder")] = "runs/smoke",
          model: ModelOpt = "", seed: int = 0) -> None:
    """A quick smoke run of the hooked core (capture, difference in means, steering) on any model."""
    from safesteer_interp.smoke import smoke_run  # lazy: torch (slow CLI start-up)

    spec = model or options.default_model()
    with err_console.status(f"loading {spec}"):
        lm, tokenizer = options.open_model(spec)
    with err_console.status("difference in means, steering, generation"):
        summary = smoke_run(lm, tokenizer, out, model_name=spec, seed=seed)
    table = Table(title=f"smoke run on {spec}")
    for key in ("n_layers", "hook_points", "candidate_shape", "steered_layer", "seconds"):
        table.add_row(key, str(summary[key]))
    console.print(table)
    console.print(f"artifacts: {out}/smoke/")


@app.command()
def hooks(model: ModelOpt = "organism") -> None:
    """List the hook points of a model (TransformerLens-style names)."""
    from safesteer_interp.core.anatomy import d_model, n_layers  # lazy: torch (slow CLI start-up)
    from safesteer_interp.core.hooks import hook_names  # lazy: torch (slow CLI start-up)

    lm, _ = options.open_model(model)
    console.print(f"{n_layers(lm)} layers, d_model={d_model(lm)}")
    for name in hook_names(lm):
        console.print(name)


def _register() -> None:
    """Stage commands live in their own modules, each importing its stage (torch, transformers) only when it runs."""
    app.command("run")(run)
    app.command("direction")(direction)
    app.command("tokens")(tokens)
    app.command("train")(train)
    app.command("eval")(eval_command)
    app.command("report")(report_command)
    app.command("analyze")(analyze)
    app.command("attack")(attack_command)
    app.command("judges")(judges_command)
    app.command("compare")(compare_command)
    app.command("datasets")(datasets_command)
    app.command("presets")(presets_command)
    app.add_typer(organism_app, name="organism")


_register()


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except SafeSteerError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
