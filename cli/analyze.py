"""`safesteer-interp analyze --run RUN`: the interpretability analyses of a run, into RUN/analysis/, linked from the
run's report (sparsity of S, per-token divergence, why these tokens, what training changed, loss geometry, steering
positions, and how deep the change goes on plain and prefilled prompts)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def analyze(
    run: Annotated[str, typer.Option("--run", help="run folder written by `safesteer-interp run`")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="base model (default: from the run)")] = None,
    only: Annotated[list[str] | None, typer.Option(help="run only this analysis (repeatable): sparsity, divergence, "
                                                        "why_tokens, training_change, loss_geometry, "
                                                        "steering_positions, safety_depth, contrast (real runs "
                                                        "with a gated row), gate_form (idem), null_space (real "
                                                        "runs with a safesteer-null-space row)")] = None,
    n_prompts: Annotated[int, typer.Option(min=1, help="held-out prompts per group (harmful, harmless)")] = 8,
    samples: Annotated[int, typer.Option(min=1, help="student answers sampled per prompt")] = 2,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 24,
    seed: int = 0,
    depth_tokens: Annotated[int, typer.Option(min=1, help="answer positions safety_depth scores after each prefill")]
    = 64,
    report: Annotated[bool, typer.Option(help="rebuild RUN/report.html afterwards so it links the analyses")] = True,
) -> None:
    """Analyse a run: where S carries the divergence, why S, what training changed, the paper loss's geometry, how
    deep the change goes."""
    from safesteer_interp.analyses.run_analyses import analyze_run  # lazy: torch (slow CLI start-up)

    index = analyze_run(run, model=model, only=only, n_prompts=n_prompts, samples=samples,
                        max_new_tokens=max_new_tokens, seed=seed, depth_tokens=depth_tokens,
                        log=lambda line: console.print(escape(line)))
    for entry in index["analyses"]:
        if only and entry["name"] not in only:
            continue  # kept from an earlier call, not recomputed now
        table = Table(title=entry["title"], show_header=False)
        for key, value in entry["headline"].items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(table)
    if report:
        from safesteer_interp.report.build import build_report  # lazy: torch (slow CLI start-up)

        console.print(f"report: {build_report(run)['html']}")
    console.print(f"index: {run}/analysis/index.json")
