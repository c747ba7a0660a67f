"""One optimizer step of localized on-policy distillation, top to bottom.

Sample answers with the current weights -> the frozen teacher's final states on them (no grad) -> the student's ->
divergence on S, a chunk of positions at a time (`vocab_pass`) -> backward, in micro-batches whose losses add up to
the step's batch mean; then clip, set the scheduled learning rate and step. The anchor baseline adds a second term.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor, nn

from safesteer_interp.core.generation import Generation
from safesteer_interp.core.scoring import View, answer_states
from safesteer_interp.distill.config import DistillConfig, lr_at, step_seed
from safesteer_interp.distill.losses import loss_window
from safesteer_interp.distill.metrics import StepStats, rollout_sums
from safesteer_interp.distill.rollout import sample_rollout
from safesteer_interp.distill.vocab_pass import LossSpec, vocab_pass
from safesteer_interp.teacher import Teacher, adapters_disabled


class StepState(Protocol):
    """What a step reads (the `Distiller` holds it): settings, the prepared student and optimizer, the teacher."""

    cfg: DistillConfig
    acc: Any  # accelerate.Accelerator
    model: nn.Module  # the prepared student (DDP-wrapped under several processes)
    optimizer: torch.optim.Optimizer
    params: dict[str, Tensor]
    teacher: Teacher
    tokenizer: Any
    instructions: list[str]
    prefills: list[str]  # empty, or one per instruction: the answer's begun text (`deepen`)
    anchor_prompts: list[str]
    plan: list[list[int]]
    safety_ids: Tensor | None
    eos: list[int]


def optimizer_step(t: StepState, step: int) -> dict:
    """Train on step `step` of the plan; returns its metrics record."""
    start = time.perf_counter()
    pieces = rollouts(t, step)  # sampled first, in eval mode: scoring below must see exactly these tokens
    stats = StepStats(anchor=t.cfg.anchor_weight > 0)
    t.optimizer.zero_grad(set_to_none=True)
    t.model.train()
    for j, (rollout, is_anchor, n_sequences) in enumerate(pieces):
        sync = j == len(pieces) - 1  # DDP all-reduces the accumulated gradients once, after the last micro-batch
        if is_anchor:
            stats.anchor_loss += anchor_term(t, rollout, n_sequences, sync)
        else:
            distill_term(t, rollout, n_sequences, sync, stats)
    grad_norm = t.acc.clip_grad_norm_(list(t.params.values()), t.cfg.max_grad_norm)
    lr = lr_at(step, len(t.plan), t.cfg)  # a function of the step alone (no scheduler state), so resume is exact
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    t.optimizer.step()
    record = stats.summary(t.acc)
    per_epoch = len(t.instructions) // t.cfg.prompts_per_step
    record.update(step=step + 1, epoch=step // per_epoch, lr=lr,
                  grad_norm=float(grad_norm), seconds=round(time.perf_counter() - start, 4))
    record["tokens_per_s"] = round(record["tokens"] / record["seconds"], 1)
    return record


def rollouts(t: StepState, step: int) -> list[tuple[Generation, bool, int]]:
    """This process's answers of the step, cut into micro-batches: (rows, is_anchor, sequences of their rollout).

    Sampled by the current weights and used once (strictly on-policy); seeded from (seed, step, rank).
    """
    cfg, rank, world = t.cfg, t.acc.process_index, t.acc.num_processes
    seed = step_seed(cfg.seed, step, rank)
    torch.manual_seed(seed)  # anything else random in the step (none today) is seeded too
    unwrapped = t.acc.unwrap_model(t.model)
    chosen = t.plan[step][rank::world]
    prefills = [t.prefills[i] for i in chosen] if t.prefills else None
    main = sample_rollout(unwrapped, t.tokenizer, [t.instructions[i] for i in chosen], samples=cfg.samples,
                          max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
                          prefills=prefills)
    pieces = [(main.rows(i, i + cfg.micro_batch), False, len(main)) for i in range(0, len(main), cfg.micro_batch)]
    if cfg.anchor_weight > 0:  # as many harmless prompts as harmful ones, answered by the same weights
        pick = random.Random(seed).sample(range(len(t.anchor_prompts)), min(len(chosen), len(t.anchor_prompts)))
        anchor = sample_rollout(unwrapped, t.tokenizer, [t.anchor_prompts[i] for i in pick], samples=cfg.samples,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed + 1)
        pieces += [(anchor.rows(i, i + cfg.micro_batch), True, len(anchor))
                   for i in range(0, len(anchor), cfg.micro_batch)]
    return pieces


def distill_term(t: StepState, rollout: Generation, n_sequences: int, sync: bool, stats: StepStats) -> None:
    """SafeSteer's loss on one micro-batch: the divergence to the steered teacher on S; backward of its share."""
    cfg, teacher = t.cfg, t.teacher
    # a prompt-only teacher steers no answer column; a gated one reads its gate where the request ends (before a
    # begun answer)
    teacher_states = frozen_states(t, rollout, lambda ids, prompt_columns: teacher.active(
        teacher.scoring_positions(ids, prompt_columns, rollout.prefill_tokens)))
    mask = loss_window(rollout.answer_mask, cfg.loss_skip, cfg.loss_keep)
    spec = LossSpec(cfg.vocab, cfg.divergence, cfg.restrict, t.safety_ids, cfg.top_k, cfg.alpha, cfg.temperature)
    with student_pass(t, sync):
        student_states = answer_states(t.model, rollout, share_prompt=not cfg.grad_checkpointing)
        loss, sums = vocab_pass(t.acc.unwrap_model(t.model), teacher.model, student_states, teacher_states,
                                rollout, mask, n_sequences, spec)  # pre-divided by the step's sequences: grads add up
        t.acc.backward(loss)
    stats.loss += float(loss.detach())
    stats.add({**rollout_sums(rollout, t.eos, t.safety_ids is not None), **sums})


def anchor_term(t: StepState, rollout: Generation, n_sequences: int, sync: bool) -> float:
    """The anchor BASELINE's general-data term on harmless answers: full-vocabulary reverse KL to the unsteered
    base model (adapters off, no steering), weighted by `anchor_weight`; backward of its share, returns its value."""
    base_states = frozen_states(t, rollout, lambda _ids, _prompt_columns: adapters_disabled(t.teacher.model))
    spec = LossSpec(vocab="full", kind="reverse", temperature=t.cfg.temperature)
    with student_pass(t, sync):
        student_states = answer_states(t.model, rollout, share_prompt=not t.cfg.grad_checkpointing)
        loss, _ = vocab_pass(t.acc.unwrap_model(t.model), t.teacher.model, student_states, base_states, rollout,
                             rollout.answer_mask, n_sequences, spec, stats=False)
        loss = t.cfg.anchor_weight * loss
        t.acc.backward(loss)
    return float(loss.detach())


def frozen_states(t: StepState, rollout: Generation, view: View) -> Float[Tensor, "batch new d_model"]:
    """Final states of the teacher's weights under `view` (steered, or the plain base), without gradients.

    A --full-ft teacher copy may live on another device: its states come to the student's (`vocab_pass` takes each
    chunk back to the teacher's head).
    """
    with torch.no_grad(), t.acc.autocast():
        # a gated teacher reads its gate on each row's prompt: one pass over prompt + answer per row
        return answer_states(t.teacher.model, rollout, view,
                             share_prompt=getattr(t.teacher, "shares_prompt_pass", True)).to(t.acc.device)


@contextmanager
def student_pass(t: StepState, sync: bool) -> Iterator[None]:
    """The student's forward and backward: autocast, and no DDP gradient sync before the step's last micro-batch."""
    with nullcontext() if sync else t.acc.no_sync(t.model), t.acc.autocast():
        yield


__all__ = ["StepState", "anchor_term", "distill_term", "optimizer_step", "rollouts"]
