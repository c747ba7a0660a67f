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

from safesteer_interp.presets import PRESET_NAMES


class Vocab(str, Enum):
    safe = "safe"
    topk = "topk"
    full = "full"


class Div(str, Enum):
    reverse = "reverse"
    forward = "forward"
    jsd = "jsd"


class Restrict(str, Enum):
    paper = "paper"
    renorm = "renorm"
    binned = "binned"


def _open_model(spec: str, dtype: str | None):
    """(model, tokenizer) on this process's device (under DDP each rank takes its own GPU)."""
    import torch

    from safesteer_interp.cli.main import open_model

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    return open_model(spec, dtype=dtype, device=device)


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
    import torch
    from rich.console import Console
    from rich.table import Table

    from safesteer_interp.data.prompts import load_instructions
    from safesteer_interp.direction.artifact import load_direction
    from safesteer_interp.distill.trainer import DistillConfig, default_prompts, distill
    from safesteer_interp.presets import resolve
    from safesteer_interp.tokens.artifact import load_safety_tokens

    if threads:
        torch.set_num_threads(threads)
    resolved, preset_record = resolve("train", preset, model=model, prompts=prompts, n_prompts=n_prompts, lr=lr,
                                      full_ft=full_ft, samples=samples, max_new_tokens=max_new_tokens,
                                      prompts_per_step=prompts_per_step, grad_checkpointing=grad_checkpointing,
                                      dtype=dtype)
    model, prompts, n_prompts, lr, full_ft = (resolved[k] for k in ("model", "prompts", "n_prompts", "lr", "full_ft"))
    samples, max_new_tokens, prompts_per_step, grad_checkpointing, dtype = (
        resolved[k] for k in ("samples", "max_new_tokens", "prompts_per_step", "grad_checkpointing", "dtype"))
    cfg = DistillConfig(vocab=vocab.value, divergence=divergence.value, restrict=restrict.value, alpha=alpha,
                        top_k=top_k, loss_skip=loss_skip, loss_keep=loss_keep, samples=samples,
                        prompts_per_step=prompts_per_step, micro_batch=micro_batch, max_new_tokens=max_new_tokens,
                        temperature=temperature, epochs=epochs, max_steps=max_steps, lr=lr, warmup_ratio=warmup_ratio,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm, full_ft=full_ft, lora_r=lora_r,
                        lora_alpha=lora_alpha, lora_targets=lora_targets, teacher_device=teacher_device,
                        grad_checkpointing=grad_checkpointing, bf16=bf16, anchor_weight=anchor_weight,
                        teacher_positions=teacher_positions, seed=seed).check()
    # Cheap input checks first: a missing artifact or prompt file should fail before a model is loaded.
    direction = load_direction(run)
    tokens_file = run / "tokens" / "tokens.json"
    safety_ids = load_safety_tokens(run) if vocab == Vocab.safe or tokens_file.is_file() else None
    if prompts is None:
        instructions = default_prompts(model, n_prompts or 100, seed)
    else:
        instructions = load_instructions(prompts, n_prompts, seed, column)
    anchors: list[str] = []
    if anchor_weight > 0:
        anchors = (load_instructions(anchor_prompts, None, seed, column) if anchor_prompts
                   else default_prompts(model, 100, seed, group="harmless"))
    if preset_record["origin"]["dtype"] == "preset" and not torch.cuda.is_available():
        dtype = None  # the reference's pure bf16 is a GPU setting; on CPU keep float32
    if dtype is None and full_ft and torch.cuda.is_available():
        dtype = "float32"  # mixed precision: AdamW steps of ~lr vanish in bf16 weights (distill.precision_report)
    lm, tokenizer = _open_model(model, dtype)
    summary = distill(run, lm, tokenizer, direction, instructions, cfg, safety_ids=safety_ids, anchor_prompts=anchors,
                      resume=resume, save_every=save_every,
                      provenance={"model": model, "prompts": prompts or f"default:{model}",
                                  "tokens": str(tokens_file) if safety_ids is not None else None,
                                  "preset": preset_record})
    if "model" not in summary:  # not the main process
        return
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
