"""Localized on-policy distillation: the student samples answers, the steered teacher scores them, and the student
minimises a divergence to the teacher restricted to the safety tokens S (reverse KL on S by default).

One optimizer step = `prompts_per_step` prompts x `samples` answers, sampled by the current weights and used once
(strictly on-policy), scored in micro-batches whose gradients add up to the step's batch mean. Every step's
randomness is seeded from (seed, step, rank), which is what makes `resume` exact (see `checkpoints`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from safesteer_interp.core.artifacts import write_json, write_jsonl
from safesteer_interp.core.generation import Generation, eos_token_ids
from safesteer_interp.core.hooks import base_model
from safesteer_interp.core.scoring import answer_logprobs
from safesteer_interp.direction.artifact import Direction, check_positions
from safesteer_interp.distill.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from safesteer_interp.distill.losses import DIVERGENCES, RESTRICTS, VOCABS, loss_window, reduce_loss, token_loss
from safesteer_interp.distill.metrics import StepStats, rollout_stats
from safesteer_interp.distill.rollout import sample_rollout
from safesteer_interp.distill.student import ALL_LINEAR, make_pair, save_final, trainable
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.teacher import as_base_model

LORA_LR, FULL_FT_LR = 2e-3, 1e-4  # organism prototype: full FT 1e-4 in 20-50 steps; LoRA needs ~10-50x more


@dataclass
class DistillConfig:
    """Everything that decides the training trajectory (saved with every checkpoint and checked on resume)."""

    vocab: str = "safe"  # full | topk | safe
    divergence: str = "reverse"  # reverse | forward | jsd
    restrict: str = "paper"  # paper (published) | renorm | binned
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


# ----------------------------------------------------------------------------------------------- inputs
def default_prompts(model_spec: str, n: int = 100, seed: int = 42, group: str = "gap") -> list[str]:
    """The default training prompts: for the organism, `n` of its safety-gap ('gap') training-split requests.

    `group="harmless"` gives the anchor baseline's harmless prompts. Real models have no default: pass --prompts.
    """
    from safesteer_interp.core.models import is_organism

    if not (is_organism(model_spec) or model_spec == "tiny-random"):
        raise SafeSteerError(f"no default prompts for model '{model_spec}'; pass --prompts (a local .json/.jsonl/.csv "
                             "with an 'instruction' column, or a datasets name)")
    from safesteer_interp.data.prompts import sample
    from safesteer_interp.organism import world

    requests = world.prompts(group, "train")
    return sample(requests, min(n, len(requests)), seed, f"organism {group} prompts")


def check_safety_ids(ids: Tensor, vocab_size: int) -> Tensor:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise SafeSteerError(f"safety token ids must lie in 0..{vocab_size - 1} (the model's vocabulary), got "
                             f"{int(ids.min())}..{int(ids.max())}; were the tokens selected for another model?")
    return ids


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
    return (seed * 1_000_003 + step * 7_919 + rank * 104_729) % 2**31


def precision_report(params, lr: float) -> dict:
    """dtype of the trained weights, and a warning when they are bf16/fp16 *and* AdamW steps (about lr per weight)
    are below the weights' rounding step: |w| * 2**-8 for bf16, so at lr 1e-5 any weight above ~2.6e-3 never moves.
    Mixed precision (fp32 weights, bf16 autocast) is the cure; pure bf16 is what the reference ran."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    low = [d for d in dtypes if d in ("bfloat16", "float16")]
    warning = None
    if low:
        mantissa = 8 if "bfloat16" in low else 11
        warning = (f"training {'/'.join(low)} weights directly: an AdamW step of ~lr={lr:g} is rounded away on every "
                   f"weight larger than {lr * 2 ** mantissa:.2g} in magnitude; load the model with --dtype float32 "
                   "(bf16 autocast still runs the math in bf16 on GPU) unless you mean to reproduce pure-bf16 training")
    return {"trained_dtypes": dtypes, "warning": warning}


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- the loop
class Distiller:
    """Owns student, teacher, optimizer and run folder; `run()` trains and returns a summary."""

    def __init__(self, run: str | Path, model, tokenizer, direction: Direction, instructions: Sequence[str],
                 cfg: DistillConfig, *, safety_ids: Tensor | None = None, anchor_prompts: Sequence[str] = (),
                 provenance: dict | None = None):
        from accelerate import Accelerator

        self.cfg, self.tokenizer, self.instructions = cfg.check(), tokenizer, list(instructions)
        if not self.instructions:
            raise SafeSteerError("no training prompts: the prompt list is empty")
        if cfg.vocab == "safe" and safety_ids is None:
            raise SafeSteerError("--vocab safe needs the safety tokens S (RUN/tokens/tokens.json)")
        if cfg.anchor_weight > 0 and not anchor_prompts:
            raise SafeSteerError("--anchor-weight > 0 needs harmless anchor prompts (--anchor-prompts)")
        self.train_dir = Path(run) / "train"
        gpu = torch.cuda.is_available()  # cpu=True lets torchrun / accelerate launch run DDP over gloo on CPUs
        self.acc = Accelerator(cpu=not gpu, mixed_precision="bf16" if cfg.bf16 and gpu else "no")
        vocab_size = base_model(model).get_output_embeddings().weight.shape[0]
        self.safety_ids = None if safety_ids is None else check_safety_ids(safety_ids, vocab_size)
        self.anchor_prompts = list(anchor_prompts)
        self.plan = step_plan(len(self.instructions), cfg)
        if cfg.prompts_per_step % self.acc.num_processes:
            raise SafeSteerError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the number of "
                                 f"processes ({self.acc.num_processes})")
        targets = cfg.lora_targets if cfg.lora_targets == ALL_LINEAR else cfg.lora_targets.split(",")
        torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn from the global RNG: same seed, same student
        self.student, self.teacher = make_pair(model, tokenizer, direction, full_ft=cfg.full_ft, lora_r=cfg.lora_r,
                                               lora_alpha=cfg.lora_alpha, lora_targets=targets,
                                               teacher_device=cfg.teacher_device,
                                               teacher_positions=cfg.teacher_positions)
        if cfg.grad_checkpointing:
            base_model(self.student).gradient_checkpointing_enable({"use_reentrant": False})
        self.params = trainable(self.student)
        self.eos = eos_token_ids(base_model(self.student), tokenizer)  # ends of turn, for the step statistics
        self.precision = precision_report(self.params.values(), cfg.learning_rate)
        if self.precision["warning"]:
            warnings.warn(self.precision["warning"], stacklevel=2)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.identity = {"config": asdict(cfg), "prompts": fingerprint(self.instructions),
                         "anchor_prompts": fingerprint(self.anchor_prompts), "direction": fingerprint(
                             [direction.vector.tolist(), direction.layer, direction.coeff]),
                         "safety_ids": None if safety_ids is None else safety_ids.tolist(),
                         "world_size": self.acc.num_processes}
        self.provenance = provenance or {}
        self.start_step = 0
        self.openers: dict = {}  # RUN/train/openers.json (openers.py), written by prepare()

    # -------------------------------------------------------------------------------------- run folder
    def prepare(self, resume: bool, on_checkpoint: Callable[[int, Path], None] | None = None) -> None:
        self.on_checkpoint = on_checkpoint
        folder = latest_checkpoint(self.train_dir)
        if resume and folder is not None:
            state = load_checkpoint(folder, self.student, self.optimizer)
            changed = [k for k in self.identity if state["identity"].get(k) != self.identity[k]]
            if changed:
                raise SafeSteerError(f"cannot resume from {folder}: {', '.join(changed)} differ from the original run "
                                     "(pass the same options, or start a fresh --run)")
            self.start_step = state["step"]
            self._truncate_metrics(self.start_step)
        elif folder is not None or (self.train_dir / "metrics.jsonl").is_file():
            if not resume:
                raise SafeSteerError(f"{self.train_dir} already holds a training run; pass --resume to continue it "
                                     "or choose a fresh --run folder")
            self._truncate_metrics(0)  # killed before its first checkpoint: resuming means starting over
        if self.acc.is_main_process:
            write_json(self.train_dir / "config.json", {**self.identity, "learning_rate": self.cfg.learning_rate,
                                                        "steps": len(self.plan), "n_prompts": len(self.instructions),
                                                        "baseline_anchor": self.cfg.anchor_weight > 0,
                                                        "precision": self.precision,
                                                        "teacher": {"positions": self.teacher.positions,
                                                                    "coeff": self.teacher.coeff,
                                                                    "layer": self.teacher.direction.layer},
                                                        **self.provenance})
        self.model, self.optimizer = self.acc.prepare(self.student, self.optimizer)
        if not self.cfg.full_ft or not self.cfg.teacher_device:
            self.teacher.model.to(self.acc.device)
        if self.acc.is_main_process:  # base and teacher only (adapters off): the same report before and after resuming
            from safesteer_interp.distill.openers import opener_report

            self.openers = opener_report(self.teacher, self.instructions, self.safety_ids, restrict=self.cfg.restrict)
            write_json(self.train_dir / "openers.json", self.openers)

    def _truncate_metrics(self, step: int) -> None:
        path = self.train_dir / "metrics.jsonl"
        if not path.is_file() or not self.acc.is_main_process:
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record.get("step", step + 1) <= step:
                kept.append(record)
        write_jsonl(path, kept)

    # -------------------------------------------------------------------------------------- one step
    def _score(self, rollout: Generation, sync: bool, n_sequences: int, anchor: bool, stats: StepStats) -> None:
        """Teacher (no grad) and student (grad) log-probs of one micro-batch; backward of its share of the loss."""
        cfg, device = self.cfg, self.acc.device
        scorer = self.teacher.model
        scorer_device = next(scorer.parameters()).device
        moved = rollout.to(scorer_device)
        context = as_base_model(scorer) if anchor else self.teacher.active(
            self.teacher.scoring_positions(moved.sequences, moved.prompt_length))
        with torch.no_grad(), context, self.acc.autocast():
            teacher_logp = answer_logprobs(scorer, moved, cfg.temperature).to(device)
        with nullcontext() if sync else self.acc.no_sync(self.model), self.acc.autocast():
            student_logp = answer_logprobs(self.model, rollout, cfg.temperature)
            mask = loss_window(rollout.answer_mask, cfg.loss_skip, cfg.loss_keep)
            if anchor:  # the baseline's general-data term: full-vocabulary reverse KL to the unsteered base model
                per_token = token_loss(student_logp, teacher_logp, vocab="full", kind="reverse")
                loss = cfg.anchor_weight * reduce_loss(per_token, rollout.answer_mask, n_sequences)
            else:
                per_token = token_loss(student_logp, teacher_logp, vocab=cfg.vocab, kind=cfg.divergence,
                                       how=cfg.restrict, safety_ids=self.safety_ids, top_k=cfg.top_k, alpha=cfg.alpha)
                loss = reduce_loss(per_token, mask, n_sequences)
            self.acc.backward(loss)
        if anchor:
            stats.anchor_loss += float(loss.detach())
        else:
            stats.loss += float(loss.detach())
            stats.add(rollout_stats(student_logp.detach(), teacher_logp, rollout, mask, self.safety_ids, self.eos))

    def _rollouts(self, step: int) -> list[tuple[Generation, bool, int]]:
        cfg, rank, world = self.cfg, self.acc.process_index, self.acc.num_processes
        seed = step_seed(cfg.seed, step, rank)
        torch.manual_seed(seed)  # anything else random in the step (none today) is seeded too
        unwrapped = self.acc.unwrap_model(self.model)
        prompts = [self.instructions[i] for i in self.plan[step][rank::world]]
        main = sample_rollout(unwrapped, self.tokenizer, prompts, samples=cfg.samples,
                              max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed)
        pieces = [(main.rows(i, i + cfg.micro_batch), False, len(main)) for i in range(0, len(main), cfg.micro_batch)]
        if cfg.anchor_weight > 0:
            pick = random.Random(seed).sample(range(len(self.anchor_prompts)), min(len(prompts),
                                                                                     len(self.anchor_prompts)))
            anchor = sample_rollout(unwrapped, self.tokenizer, [self.anchor_prompts[i] for i in pick],
                                    samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, seed=seed + 1)
            pieces += [(anchor.rows(i, i + cfg.micro_batch), True, len(anchor))
                       for i in range(0, len(anchor), cfg.micro_batch)]
        return pieces

    def step(self, step: int) -> dict:
        start = time.perf_counter()
        pieces = self._rollouts(step)
        stats = StepStats(anchor=self.cfg.anchor_weight > 0)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        for j, (rollout, anchor, n) in enumerate(pieces):
            self._score(rollout, j == len(pieces) - 1, n, anchor, stats)
        grad_norm = self.acc.clip_grad_norm_(list(self.params.values()), self.cfg.max_grad_norm)
        lr = lr_at(step, len(self.plan), self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        record = stats.summary(self.acc)
        per_epoch = len(self.instructions) // self.cfg.prompts_per_step
        record.update(step=step + 1, epoch=step // per_epoch, lr=lr,
                      grad_norm=float(grad_norm), seconds=round(time.perf_counter() - start, 4))
        record["tokens_per_s"] = round(record["tokens"] / record["seconds"], 1)
        return record

    # -------------------------------------------------------------------------------------- whole run
    def run(self, save_every: int = 10, keep_checkpoints: int = 2, progress: bool = True) -> dict:
        total, metrics_path = len(self.plan), self.train_dir / "metrics.jsonl"
        started = time.perf_counter()
        last: dict = {}
        with _progress(progress and self.acc.is_main_process) as bar:
            task = bar.add_task("distilling", total=total, completed=self.start_step, loss=float("nan"))
            for step in range(self.start_step, total):
                last = self.step(step)
                if self.acc.is_main_process:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(last) + "\n")
                bar.update(task, advance=1, loss=last["loss"])
                if (step + 1) % save_every == 0 or step + 1 == total:
                    self._checkpoint(step + 1, keep_checkpoints)
        unwrapped = self.acc.unwrap_model(self.model)
        summary = {"steps": total, "resumed_from": self.start_step, "seconds": round(time.perf_counter() - started, 2),
                   "last": last}
        if self.acc.is_main_process:
            self.final_model, written = save_final(unwrapped, self.tokenizer, self.train_dir)
            summary.update(written)
            if self.openers.get("note"):
                summary["openers_note"] = self.openers["note"]
            write_json(self.train_dir / "summary.json", summary)
        self.acc.wait_for_everyone()
        return summary

    def _checkpoint(self, step: int, keep: int) -> None:
        if self.acc.is_main_process:
            folder = save_checkpoint(self.train_dir, step, trainable(self.acc.unwrap_model(self.model)),
                                     self.optimizer, {"identity": self.identity}, keep)
            if self.on_checkpoint is not None:
                self.on_checkpoint(step, folder)
        self.acc.wait_for_everyone()


def _progress(enabled: bool):
    from rich import progress as rp
    from rich.console import Console

    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn(),
                       rp.TextColumn("loss {task.fields[loss]:.4f}"),
                       console=Console(stderr=True), disable=not enabled, transient=False)


def distill(run: str | Path, model, tokenizer, direction: Direction, instructions: Sequence[str],
            cfg: DistillConfig | None = None, *, safety_ids: Tensor | None = None, anchor_prompts: Sequence[str] = (),
            resume: bool = False, save_every: int = 10, keep_checkpoints: int = 2, progress: bool = True,
            on_checkpoint: Callable[[int, Path], None] | None = None, provenance: dict | None = None) -> dict:
    """Train `model` into RUN/train/ (metrics.jsonl, checkpoints/, model/, adapter/) and return the summary."""
    distiller = Distiller(run, model, tokenizer, direction, instructions, cfg or DistillConfig(),
                          safety_ids=safety_ids, anchor_prompts=anchor_prompts, provenance=provenance)
    distiller.prepare(resume, on_checkpoint)
    return distiller.run(save_every, keep_checkpoints, progress)


def config_fields() -> list[str]:
    return [f.name for f in fields(DistillConfig)]


__all__ = ["DistillConfig", "Distiller", "default_prompts", "distill", "lr_at", "step_plan"]
