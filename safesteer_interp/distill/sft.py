"""The SFT baseline: supervised fine-tuning on the steered teacher's own answers to the training prompts.

Same prompts, samples, LoRA adapters, learning rate and number of optimizer steps as SafeSteer; the only change is
the signal: cross-entropy on teacher-written answers (off-policy, every answer token) instead of an on-policy KL
restricted to the safety tokens. It answers "is the on-policy, token-localized part what matters?".
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from safesteer_interp.core.artifacts import write_json, write_jsonl
from safesteer_interp.core.chat import batch_from_ids
from safesteer_interp.core.generation import Generation
from safesteer_interp.distill.config import DistillConfig, lr_at
from safesteer_interp.distill.student import lora_student, save_final, trainable
from safesteer_interp.teacher import Teacher


def teacher_answers(teacher: Teacher, prompts: Sequence[str], cfg: DistillConfig):
    """Token rows (prompt + teacher answer) and the answer mask, sampled like the student's rollouts."""
    rows = []
    for start in range(0, len(prompts), 16):
        gen = teacher.generate(list(prompts[start:start + 16]), max_new_tokens=cfg.max_new_tokens, do_sample=True,
                               temperature=cfg.temperature, num_return_sequences=cfg.samples, seed=cfg.seed + start)
        rows.append(gen)
    return rows


def answer_columns(generation: Generation) -> Tensor:
    """The answer mask over prompt + answer columns (False on the prompt): the tokens the cross-entropy trains."""
    answers = generation.answer_mask
    prompt = torch.zeros(len(generation), generation.prompt_length, dtype=torch.bool, device=answers.device)
    return torch.cat([prompt, answers], 1)


def sft(run: str | Path, model, tokenizer, teacher: Teacher, prompts: Sequence[str], cfg: DistillConfig) -> dict:
    """Train LoRA adapters by CE on teacher answers; write RUN/train/ like `distill` (metrics, model/)."""
    out = Path(run) / "train"
    start_time = time.perf_counter()
    generations = teacher_answers(teacher, prompts, cfg)
    torch.manual_seed(cfg.seed)  # LoRA init draws from the global RNG
    student = lora_student(model, cfg.lora_r, cfg.lora_alpha)
    params = trainable(student)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sequences = [row for g in generations for row in zip(g.sequences, g.attention_mask, answer_columns(g))]
    per_step = cfg.prompts_per_step * cfg.samples
    total = cfg.max_steps or cfg.epochs * math.ceil(len(sequences) / per_step)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(sequences), generator=generator).tolist()
    metrics: list[dict] = []
    student.train()
    for step in range(total):
        idx = [order[(step * per_step + j) % len(order)] for j in range(per_step)]
        ids = torch.nn.utils.rnn.pad_sequence([sequences[i][0] for i in idx], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([sequences[i][1] for i in idx], batch_first=True)
        target = torch.nn.utils.rnn.pad_sequence([sequences[i][2] for i in idx], batch_first=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        logits = student(**batch_from_ids(ids, mask).inputs(), use_cache=False).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        answer = target[:, 1:].float()
        loss = -((logp * answer).sum(-1) / answer.sum(-1).clamp(min=1)).mean()  # per-sequence mean, as SafeSteer
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), cfg.max_grad_norm)
        optimizer.step()
        metrics.append({"step": step + 1, "loss": round(loss.item(), 6), "lr": lr_at(step, total, cfg)})
    student.eval()
    write_jsonl(out / "metrics.jsonl", metrics)
    _, written = save_final(student, tokenizer, out)
    summary = {"method": "sft on steered-teacher answers", "steps": total, "sequences": len(sequences),
               "seconds": round(time.perf_counter() - start_time, 2), **written}
    write_json(out / "summary.json", summary)
    return summary
