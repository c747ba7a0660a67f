"""The distillation's settings and its schedule: which prompts each step uses, at which learning rate, seeded how.

`DistillConfig` holds everything that decides the training trajectory; it is saved with every checkpoint and must
match on resume. The schedule is a pure function of the config: a seeded shuffle per epoch, warmup then cosine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from safesteer_interp.direction.artifact import check_positions
from safesteer_interp.distill.losses import loss_window
from safesteer_interp.distill.student import ALL_LINEAR
from safesteer_interp.distill.variants import DIVERGENCES, RESTRICTS, VOCABS, Divergence, Restrict, Vocab
from safesteer_interp.errors import SafeSteerError

LORA_LR, FULL_FT_LR = 2e-3, 1e-4  # without --lr; LoRA adapters start at zero and need a much larger step


@dataclass
class DistillConfig:
    """Everything that decides the training trajectory (saved with every checkpoint and checked on resume)."""

    vocab: Vocab = "safe"  # full | topk | safe
    divergence: Divergence = "reverse"  # reverse | forward | jsd
    restrict: Restrict = "paper"  # paper (published) | renorm | binned
    alpha: float = 0.5  # generalised JSD mixture weight (1 = reverse KL, 0 = forward KL)
    top_k: int = 50  # K of --vocab topk
    loss_skip: int = 0  # loss window [skip, keep) over answer positions (keep = 0: to the end)
    loss_keep: int = 0
    samples: int = 8  # answers per prompt
    prompts_per_step: int = 2  # prompts per optimizer step (all ranks together)
    micro_batch: int = 16  # sequences per forward/backward (gradient accumulation inside a step)
    max_new_tokens: int = 40
    temperature: float = 1.0
    epochs: int = 1
    max_steps: int = 0  # 0: epochs x (prompts // prompts_per_step)
    lr: float | None = None  # None: 2e-3 with LoRA, 1e-4 with --full-ft
    warmup_ratio: float = 0.1
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    full_ft: bool = False
    lora_r: int = 16
    lora_alpha: float | None = None  # None: 2 r
    lora_targets: str = ALL_LINEAR  # comma-separated module names or 'all-linear'
    teacher_device: str | None = None  # --full-ft only: where the frozen teacher copy lives
    teacher_positions: str | None = None  # all (reference) | prompt | last | None: the direction's
    grad_checkpointing: bool = False
    bf16: bool = True  # autocast to bfloat16 on GPU (ignored on CPU)
    anchor_weight: float = 0.0  # > 0: BASELINE, adds KL to the base model on harmless prompts (general data)
    seed: int = 42

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (FULL_FT_LR if self.full_ft else LORA_LR)

    def check(self) -> DistillConfig:
        for name, value, allowed in (("vocab", self.vocab, VOCABS), ("divergence", self.divergence, DIVERGENCES),
                                     ("restrict", self.restrict, RESTRICTS)):
            if value not in allowed:
                raise SafeSteerError(f"--{name} {value!r} is not one of {', '.join(allowed)}")
        for name in ("samples", "prompts_per_step", "micro_batch", "max_new_tokens", "epochs"):
            if getattr(self, name) < 1:
                raise SafeSteerError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise SafeSteerError(f"--temperature must be > 0, got {self.temperature}")
        check_positions(self.teacher_positions, "--teacher-positions")
        loss_window(torch.zeros(1, 1, dtype=torch.bool), self.loss_skip, self.loss_keep)  # validates the window
        return self


def config_fields() -> list[str]:
    return [f.name for f in fields(DistillConfig)]


def config_from(options: Mapping[str, Any]) -> DistillConfig:
    """The checked config from a mapping that may hold more (e.g. all of a command's options): extra keys are
    ignored, missing ones keep their defaults."""
    names = set(config_fields())
    return DistillConfig(**{k: v for k, v in options.items() if k in names}).check()


# ----------------------------------------------------------------------------------------------- schedule
def step_plan(n_prompts: int, cfg: DistillConfig) -> list[list[int]]:
    """Prompt indices of every optimizer step: a seeded shuffle per epoch, cut into full chunks (as the reference,
    an incomplete last chunk is dropped)."""
    per_epoch = n_prompts // cfg.prompts_per_step
    if per_epoch == 0:
        raise SafeSteerError(f"{n_prompts} prompts cannot fill one step of --prompts-per-step {cfg.prompts_per_step}")
    plan = []
    for epoch in range(cfg.epochs):
        order = list(range(n_prompts))
        random.Random(cfg.seed * 1000 + epoch).shuffle(order)
        plan += [order[i * cfg.prompts_per_step:(i + 1) * cfg.prompts_per_step] for i in range(per_epoch)]
    return plan[:cfg.max_steps] if cfg.max_steps else plan


def lr_at(step: int, total: int, cfg: DistillConfig) -> float:
    """Linear warmup over ceil(warmup_ratio * total) steps (the first step already moves), then cosine decay."""
    warmup = math.ceil(cfg.warmup_ratio * total)
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.learning_rate * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of everything random in one step of one process: a step depends only on its starting weights."""
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**31


__all__ = ["FULL_FT_LR", "LORA_LR", "DistillConfig", "config_fields", "config_from", "lr_at", "step_plan",
           "step_seed"]
