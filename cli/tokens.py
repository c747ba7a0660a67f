"""`safesteer-interp tokens`: select the safety tokens S of a run and say why each one is there."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from safesteer_interp.cli import options
from safesteer_interp.cli.options import DeviceOption, DtypeOption, ModelOption, PresetOption
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.presets import resolve

console = Console()
err_console = Console(stderr=True)


def parse_k(k: str, flag: str = "--k") -> int | str:
    if k == "auto":
        return "auto"
    try:
        value = int(k)
    except ValueError:
        value = 0
    if value < 1:
        raise SafeSteerError(f"{flag} must be a positive integer or 'auto', not '{k}'")
    return value


def tokens(
    run: Annotated[str, typer.Option("--run", help="run folder (reads RUN/direction/, writes RUN/tokens/)")],
    preset: PresetOption = None,
    k: Annotated[str | None, typer.Option(help="size of S: an integer (the reference's fixed K; default 50) or "
                                               "'auto' (smallest S carrying --share of the Δ-weighted teacher "
                                               "mass)")] = None,
    horizon: Annotated[int | None, typer.Option(help="answer positions scored per sample (H; default 5, the "
                                                     "preset's with --preset)")] = None,
    samples: Annotated[int | None, typer.Option(help="samples per prompt (M, default 8; sampled only when "
                                                     "M > 1)")] = None,
    method: Annotated[str | None, typer.Option(help="fixed-K ranking: 'vote' (reference, default), 'mean' "
                                                    "(reference) or 'mass' (Δ-weighted teacher mass)")] = None,
    on: Annotated[str | None, typer.Option(help="prompts: 'harmless' or 'harmful' filtered validation prompts "
                                                "(default: harmless for --teacher vector, harmful for prompt)")] = None,
    teacher: Annotated[str, typer.Option(help="'vector' (steered model) or 'prompt' (safety system "
                                              "prompt)")] = "vector",
    seed: Annotated[int, typer.Option(help="sampling seed (stability also uses seed + 1)")] = 42,
    share: Annotated[float, typer.Option(help="mass share for --k auto")] = 0.95,
    k_inner: Annotated[str | None, typer.Option("--k-inner", help="K': tokens each record votes for; 'auto' "
                                                                   "(default) = the reference's 200, or 2% of the "
                                                                   "vocabulary if smaller (200 on real chat models)")]
    = None,
    min_prob: Annotated[float | None, typer.Option("--min-prob", help="ban tokens with mean teacher probability "
                                                                      "below this (default 1e-6, the preset's "
                                                                      "with --preset)")] = None,
    temperature: Annotated[float, typer.Option(help="sampling temperature of the teacher")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", help="nucleus sampling (1 = off; top-k is always off)")] = 1.0,
    coeff: Annotated[float | None, typer.Option(help="steering coefficient (default: the direction's, "
                                                     "1.0 unless chosen otherwise)")] = None,
    positions: Annotated[str | None, typer.Option(help="where the teacher steers: 'all' (reference), 'prompt' "
                                                       "(prompt tokens only) or 'last' (last prompt token); "
                                                       "default: the direction stage's choice")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="prompts per forward pass")] = 32,
    stability: Annotated[bool, typer.Option("--stability/--no-stability", help="re-select on prompt halves and a "
                                                                               "second seed")] = True,
    top: Annotated[int, typer.Option(help="tokens to print")] = 10,
    model: ModelOption = None,
    dtype: DtypeOption = None,
    device: DeviceOption = None,
) -> None:
    """Select the safety tokens S (stage 2) and explain each one.

    A preset sets H, min-prob, K, M, K' and the method; explicit flags override it.
    """
    from safesteer_interp.tokens.stage import check_inputs, run_tokens, token_configs  # lazy: torch, when it runs

    values, preset_record = resolve("tokens", preset, model=model or None, k=k, horizon=horizon, samples=samples,
                                    method=method, k_inner=k_inner, min_prob=min_prob)
    k, horizon, samples, method, k_inner, min_prob = (values[name] for name in ("k", "horizon", "samples", "method",
                                                                                 "k_inner", "min_prob"))
    k_inner = parse_k(str(k_inner), "--k-inner")
    contrast, vote = token_configs(horizon=horizon, samples=samples, temperature=temperature, top_p=top_p, seed=seed,
                                   batch_size=batch_size, k=parse_k(str(k)), method=method, k_inner=k_inner,
                                   min_prob=min_prob, share=share)
    on, prompts = check_inputs(run, teacher, on, positions)  # before the model loads
    spec = values["model"] or options.default_model()
    preset_record["values"]["model"] = spec
    with err_console.status(f"loading {spec}"):
        lm, tokenizer = options.open_model(spec, dtype, device or options.default_device())

    passes = 2 if stability else 1
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(f"scoring {len(prompts)} {on} prompts x {samples} samples", total=passes * len(prompts))
        result = run_tokens(run, lm, tokenizer, prompts=prompts, on=on, teacher_kind=teacher, coeff=coeff,
                            positions=positions, contrast=contrast, vote=vote, check_stability=stability,
                            progress=lambda n: bar.advance(task, n), extra_config={"preset": preset_record})

    print_result(result, method, share, k_inner, top)
    console.print(f"artifacts: {run}/tokens/")


def print_result(result, method: str, share: float, k_inner: int | str, top: int) -> None:
    """S with the reason for each of its first `top` tokens, both sizes, the vote's warning and the stability."""
    from safesteer_interp.tokens.explain import reason  # lazy: torch, only when the command runs
    from safesteer_interp.tokens.vote import vote_warning  # lazy: torch, as above

    n_valid = result.selection.stats.n_valid
    table = Table(title=f"safety tokens S: {result.selection_label} ({len(result.ids)} tokens, {n_valid} records)")
    table.add_column("#", justify="right")
    table.add_column("token")
    table.add_column("why")
    for item in result.explanations[:top]:
        table.add_row(str(item["rank"]), repr(item["text"]), reason(item, n_valid))
    console.print(table)
    console.print(f"fixed K={result.config['k_fixed']} ({method}): {len(result.fixed.ids)} tokens, "
                  f"{result.fixed.mass_share:.1%} of the Δ-weighted teacher mass; k auto ({share:.0%}): "
                  f"{len(result.auto.ids)} tokens, {result.auto.mass_share:.1%}")
    warning = vote_warning(result.fixed, k_inner)
    if warning:
        console.print(f"[yellow]note (fixed K):[/] {warning}")
    if result.stability is not None:
        cells = [f"k={key}: halves {e['jaccard_halves']}, seeds {e['jaccard_seeds']}"
                 for key, e in result.stability.by_k.items()]
        console.print("stability (Jaccard): " + "; ".join(cells))
