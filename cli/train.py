"""`safesteer-interp train`: stage 3, localized on-policy distillation of the steered teacher into the model.

Reads RUN/direction/ (the teacher's steering vector) and, for --vocab safe, RUN/tokens/ (the set S); writes
RUN/train/ (config.json, metrics.jsonl, checkpoints/, model/, adapter/, summary.json). Registered in main.py as
`app.command("train")(train)`; works unchanged under `accelerate launch` (DDP).
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safesteer_interp.cli import options
from safesteer_interp.data.prompts import load_instructions
from safesteer_interp.distill.variants import DIVERGENCES, RESTRICTS, VOCABS
from safesteer_interp.presets import PRESET_NAMES, STAGE_OPTIONS, resolve

# The choices are the loss variants' own tuples, so a new variant needs no second list here.
Vocab = Enum("Vocab", [(v, v) for v in VOCABS], type=str)
Div = Enum("Div", [(d, d) for d in DIVERGENCES], type=str)
Restrict = Enum("Restrict", [(r, r) for r in RESTRICTS], type=str)


def _open_model(spec: str, dtype: str | None):
    """(model, tokenizer) on this process's device (under DDP each rank takes its own GPU)."""
    import torch  # lazy: torch (slow CLI start-up)

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return options.open_model(spec, dtype=dtype, device=device)


def train(
    run: Annotated[Path, typer.Option("--run", help="Run folder (reads direction/ and tokens/, writes train/).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="'organism', a local folder or a hub name "
                                                                    "(default: the preset's model, else organism).")]
    = None,
    preset: Annotated[str | None, typer.Option(help=f"Released hyper-parameters of the reference for one model: "
                                                    f"{PRESET_NAMES} (see `safesteer-interp presets`); explicit "
                                                    "flags override it.")] = None,
    prompts: Annotated[str | None, typer.Option(help="Harmful training prompts: .json/.jsonl/.csv with an "
                                                     "'instruction' column, a dataset name (pku-saferlhf, advbench, "
                                                     "...; NAME=PATH for a local copy; see `safesteer-interp "
                                                     "datasets`) or a hub id (default: pku-saferlhf with --preset, "
                                                     "else the organism's safety-gap training prompts).")] = None,
    n_prompts: Annotated[int | None, typer.Option(help="Sample this many prompts (seeded; default 100 for the "
                                                       "organism and with --preset, all of --prompts otherwise).")]
    = None,
    column: Annotated[str, typer.Option(help="Instruction column of --prompts.")] = "instruction",
    vocab: Annotated[Vocab, typer.Option(help="Tokens the loss sees: the safety set S, teacher top-K, or all.")]
    = Vocab.safe,
    divergence: Annotated[Div, typer.Option(help="reverse KL (SafeSteer), forward KL, or generalised JSD.")]
    = Div.reverse,
    restrict: Annotated[Restrict, typer.Option(help="paper: unnormalised partial sum over S (published); renorm: "
                                                    "renormalised on S; binned: S + one rest bucket (a true "
                                                    "divergence).")] = Restrict.paper,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="JSD mixture weight (1 = reverse, 0 = forward).")]
    = 0.5,
    top_k: Annotated[int, typer.Option(min=1, help="K of --vocab topk.")] = 50,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank (student = adapters, teacher = adapters off).")] = 16,
    lora_alpha: Annotated[float | None, typer.Option(help="LoRA alpha (default 2 r).")] = None,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated module names, or 'all-linear'.")] = "all-linear",
    full_ft: Annotated[bool | None, typer.Option("--full-ft/--lora", help="Train all weights (the teacher becomes a "
                                                                          "frozen copy) or LoRA adapters (default: "
                                                                          "LoRA; full FT with --preset).")] = None,
    teacher_device: Annotated[str | None, typer.Option(help="--full-ft: device of the teacher copy.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: the preset's, else 2e-3 LoRA, 1e-4 "
                                                  "full FT).")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    max_steps: Annotated[int, typer.Option(min=0, help="Stop after this many steps (0: all epochs).")] = 0,
    samples: Annotated[int | None, typer.Option(min=1, help="Answers sampled per prompt (default 8).")] = None,
    prompts_per_step: Annotated[int | None, typer.Option(min=1, help="Prompts per optimizer step, all processes "
                                                                     "(default 2; 4 with --preset).")] = None,
    micro_batch: Annotated[int, typer.Option(min=1, help="Sequences per forward/backward.")] = 16,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Answer length (default 40; 512 with "
                                                                   "--preset).")] = None,
    temperature: Annotated[float, typer.Option(min=1e-6)] = 1.0,
    loss_skip: Annotated[int, typer.Option(min=0, help="Skip the first answer positions in the loss.")] = 0,
    loss_keep: Annotated[int, typer.Option(min=0, help="Only answer positions < keep count (0: all).")] = 0,
    warmup_ratio: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.1,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(min=0.0)] = 1.0,
    grad_checkpointing: Annotated[bool | None, typer.Option("--grad-checkpointing/--no-grad-checkpointing",
                                                            help="Default off; on with --preset.")] = None,
    bf16: Annotated[bool, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast on GPU.")] = True,
    dtype: Annotated[str | None, typer.Option(help="Weight dtype. Default: float32 on CPU; on GPU bfloat16 for LoRA "
                                                   "(frozen base, fp32 adapters) and float32 master weights for "
                                                   "--full-ft (bf16 autocast does the math). --dtype bfloat16 with "
                                                   "--full-ft reproduces the reference's pure-bf16 training.")] = None,
    teacher_positions: Annotated[str | None, typer.Option(help="Where the teacher steers: 'all' prompt and answer "
                                                               "tokens (reference), 'prompt' tokens only or 'last' "
                                                               "prompt token (default: the direction stage's "
                                                               "choice).")] = None,
    anchor_weight: Annotated[float, typer.Option(min=0.0, help="BASELINE only: weight of a KL-to-base term on "
                                                               "harmless prompts (general data).")] = 0.0,
    anchor_prompts: Annotated[str | None, typer.Option(help="Harmless prompts of the anchor baseline.")] = None,
    save_every: Annotated[int, typer.Option(min=1, help="Checkpoint every N steps.")] = 10,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN/train/checkpoints.")] = False,
    seed: int = 42,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
) -> None:
    """Distil the steered teacher into the model on its own samples, with the loss restricted to S."""
    given = {k: v.value if isinstance(v, Enum) else v for k, v in locals().items()}  # first line: only the options
    import torch  # lazy: torch (slow CLI start-up), as every import below

    from safesteer_interp.direction.artifact import load_direction  # lazy: torch
    from safesteer_interp.distill.config import config_from  # lazy: torch
    from safesteer_interp.distill.precision import weight_dtype  # lazy: torch
    from safesteer_interp.distill.trainer import distill  # lazy: torch
    from safesteer_interp.tokens.artifact import load_safety_tokens, tokens_file  # lazy: torch

    if threads:
        torch.set_num_threads(threads)
    resolved, preset_record = resolve("train", preset, **{k: given[k] for k in STAGE_OPTIONS["train"]})
    given.update(resolved)
    cfg = config_from(given)
    # Cheap input checks first: a missing artifact or prompt file should fail before a model is loaded.
    direction = load_direction(run)
    safety_ids = load_safety_tokens(run) if cfg.vocab == "safe" or tokens_file(run).is_file() else None
    instructions, anchors = _prompts(given)
    from_preset = preset_record["origin"]["dtype"] == "preset"
    dtype = weight_dtype(given["dtype"], full_ft=cfg.full_ft, from_preset=from_preset, gpu=torch.cuda.is_available())
    lm, tokenizer = _open_model(given["model"], dtype)
    summary = distill(run, lm, tokenizer, direction, instructions, cfg, safety_ids=safety_ids, anchor_prompts=anchors,
                      resume=resume, save_every=save_every,
                      provenance={"model": given["model"],
                                  "prompts": given["prompts"] or f"default:{given['model']}",
                                  "tokens": str(tokens_file(run)) if safety_ids is not None else None,
                                  "preset": preset_record})
    if "model" in summary:  # only the main process prints
        _print_summary(summary)


def _prompts(given: dict) -> tuple[list[str], list[str]]:
    """(training prompts, anchor prompts) from the resolved options."""
    from safesteer_interp.distill.trainer import default_prompts  # lazy: torch (slow CLI start-up)

    model, seed, column = given["model"], given["seed"], given["column"]
    if given["prompts"] is None:
        instructions = default_prompts(model, given["n_prompts"] or 100, seed)
    else:
        instructions = load_instructions(given["prompts"], given["n_prompts"], seed, column)
    anchors: list[str] = []
    if given["anchor_weight"] > 0:
        anchors = (load_instructions(given["anchor_prompts"], None, seed, column) if given["anchor_prompts"]
                   else default_prompts(model, 100, seed, group="harmless"))
    return instructions, anchors


def _print_summary(summary: dict) -> None:
    last = summary["last"]
    table = Table(title=f"distillation: {summary['steps']} steps in {summary['seconds']:.0f}s")
    for key in ("loss", "kl_full", "kl_k3", "mass_S_student", "mass_S_teacher", "first_mass_S_student",
                "first_mass_S_teacher", "kl_share_S", "len_mean"):
        if key in last:
            table.add_row(key, f"{last[key]:.4f}")
    console = Console()
    console.print(table)
    console.print(f"model: {summary['model']}" + (f"  adapter: {summary['adapter']}" if "adapter" in summary else ""))
    if summary.get("openers_note"):
        console.print(summary["openers_note"], highlight=False)
