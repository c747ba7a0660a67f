"""Localized on-policy distillation: the student samples answers, the steered teacher scores them, and the student
minimises a divergence to the teacher restricted to the safety tokens S (reverse KL on S by default).

`distill()` is the entry point: a `Distiller` owns student, teacher, optimizer and the run folder RUN/train/, and
calls `step.optimizer_step` once per step of the plan (`config`), checkpointing so that `resume` is exact.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from rich import progress as rp
from rich.console import Console
from torch import Tensor, nn

from safesteer_interp.core.anatomy import base_model, vocab_size
from safesteer_interp.core.artifacts import write_json
from safesteer_interp.core.generation import eos_token_ids
from safesteer_interp.core.hooks import RowGate, RowMap
from safesteer_interp.core.models import is_organism
from safesteer_interp.core.progress import log_ticks
from safesteer_interp.data.prompts import sample
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.distill.checkpoints import save_checkpoint
from safesteer_interp.distill.config import DistillConfig, step_plan
from safesteer_interp.distill.openers import opener_report
from safesteer_interp.distill.precision import precision_report
from safesteer_interp.distill.resume import gate_record, resume_step, run_identity
from safesteer_interp.distill.step import optimizer_step
from safesteer_interp.distill.student import ALL_LINEAR, make_pair, save_final, trainable
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.organism import world


# ----------------------------------------------------------------------------------------------- inputs
def default_prompts(model_spec: str, n: int = 100, seed: int = 42, group: str = "gap") -> list[str]:
    """The default training prompts: for the organism, `n` of its safety-gap ('gap') training-split requests.

    `group="harmless"` gives the anchor baseline's harmless prompts. Real models have no default: pass --prompts.
    """
    if not (is_organism(model_spec) or model_spec == "tiny-random"):
        raise SafeSteerError(f"no default prompts for model '{model_spec}'; pass --prompts (a local .json/.jsonl/.csv "
                             "with an 'instruction' column, or a datasets name)")
    requests = world.prompts(group, "train")
    return sample(requests, min(n, len(requests)), seed, f"organism {group} prompts")


def check_safety_ids(ids: Tensor, vocab_size: int) -> Tensor:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise SafeSteerError(f"safety token ids must lie in 0..{vocab_size - 1} (the model's vocabulary), got "
                             f"{int(ids.min())}..{int(ids.max())}; were the tokens selected for another model?")
    return ids


def check_inputs(cfg: DistillConfig, instructions: Sequence[str], safety_ids: Tensor | None,
                 anchor_prompts: Sequence[str], prefills: Sequence[str] = ()) -> None:
    if not instructions:
        raise SafeSteerError("no training prompts: the prompt list is empty")
    if prefills and len(prefills) != len(instructions):
        raise SafeSteerError(f"{len(prefills)} prefills for {len(instructions)} training prompts: pass one per "
                             "prompt ('' for a plain one) or none")
    if cfg.vocab == "safe" and safety_ids is None:
        raise SafeSteerError("--vocab safe needs the safety tokens S (RUN/tokens/tokens.json)")
    if cfg.anchor_weight > 0 and not anchor_prompts:
        raise SafeSteerError("--anchor-weight > 0 needs harmless anchor prompts (--anchor-prompts)")


# ----------------------------------------------------------------------------------------------- the loop
class Distiller:
    """Owns student, teacher, optimizer and run folder; `prepare()` then `run()` trains and returns a summary."""

    def __init__(self, run: str | Path, model, tokenizer, direction: Direction, instructions: Sequence[str],
                 cfg: DistillConfig, *, safety_ids: Tensor | None = None, anchor_prompts: Sequence[str] = (),
                 provenance: dict | None = None, prefills: Sequence[str] = (), teacher_also: Sequence[Direction] = (),
                 teacher_gate: RowGate | RowMap | None = None):
        self.cfg, self.tokenizer, self.instructions = cfg.check(), tokenizer, list(instructions)
        self.prefills = list(prefills)  # empty, or the begun answer of each instruction ("" for none; `deepen`)
        check_inputs(cfg, self.instructions, safety_ids, anchor_prompts, self.prefills)
        self.train_dir = Path(run) / "train"
        self.acc = self._accelerator()
        self.safety_ids = None if safety_ids is None else check_safety_ids(safety_ids, vocab_size(model))
        self.anchor_prompts = list(anchor_prompts)
        self.plan = step_plan(len(self.instructions), cfg)
        if cfg.prompts_per_step % self.acc.num_processes:
            raise SafeSteerError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the number of "
                                 f"processes ({self.acc.num_processes})")
        self.student, self.teacher = self._pair(model, tokenizer, direction, teacher_also, teacher_gate)
        self.params = trainable(self.student)
        self.eos = eos_token_ids(base_model(self.student), tokenizer)  # ends of turn, for the step statistics
        self.precision = precision_report(self.params.values(), cfg.learning_rate)
        if self.precision["warning"]:
            warnings.warn(self.precision["warning"], stacklevel=2)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.identity = run_identity(cfg, self.instructions, self.anchor_prompts, direction, safety_ids,
                                     self.acc.num_processes, self.prefills, self.teacher.also, teacher_gate)
        self.provenance = provenance or {}
        self.start_step = 0
        self.openers: dict = {}  # RUN/train/openers.json (openers.py), written by prepare()

    def _accelerator(self):
        from accelerate import Accelerator  # lazy: accelerate is heavy, and only training needs it

        gpu = torch.cuda.is_available()  # cpu=True lets torchrun / accelerate launch run DDP over gloo on CPUs
        return Accelerator(cpu=not gpu, mixed_precision="bf16" if self.cfg.bf16 and gpu else "no")

    def _pair(self, model: nn.Module, tokenizer, direction: Direction, teacher_also: Sequence[Direction],
              teacher_gate: RowGate | RowMap | None):
        cfg = self.cfg
        targets = cfg.lora_targets if cfg.lora_targets == ALL_LINEAR else cfg.lora_targets.split(",")
        torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn from the global RNG: same seed, same student
        student, teacher = make_pair(model, tokenizer, direction, full_ft=cfg.full_ft, lora_r=cfg.lora_r,
                                     lora_alpha=cfg.lora_alpha, lora_targets=targets,
                                     teacher_device=cfg.teacher_device, teacher_positions=cfg.teacher_positions,
                                     teacher_also=teacher_also, teacher_gate=teacher_gate)
        if cfg.grad_checkpointing:
            base_model(student).gradient_checkpointing_enable({"use_reentrant": False})
        return student, teacher

    # -------------------------------------------------------------------------------------- run folder
    def prepare(self, resume: bool, on_checkpoint: Callable[[int, Path], None] | None = None) -> None:
        self.on_checkpoint = on_checkpoint
        self.start_step = resume_step(self.train_dir, resume, self.identity, self.student, self.optimizer,
                                      self.acc.is_main_process)
        if self.acc.is_main_process:
            write_json(self.train_dir / "config.json", self._config_record())
        self.model, self.optimizer = self.acc.prepare(self.student, self.optimizer)
        if not self.cfg.full_ft or not self.cfg.teacher_device:
            self.teacher.model.to(self.acc.device)
        if self.acc.is_main_process:  # base and teacher only (adapters off): the same report before and after resuming
            self.openers = opener_report(self.teacher, self.instructions, self.safety_ids, restrict=self.cfg.restrict)
            write_json(self.train_dir / "openers.json", self.openers)

    def _config_record(self) -> dict:
        """RUN/train/config.json: the run's identity plus what it resolved to (learning rate, steps, precision)."""
        return {**self.identity, "learning_rate": self.cfg.learning_rate, "steps": len(self.plan),
                "n_prompts": len(self.instructions), "baseline_anchor": self.cfg.anchor_weight > 0,
                "precision": self.precision, "teacher": {"positions": self.teacher.positions,
                                                         "coeff": self.teacher.coeff,
                                                         "layer": self.teacher.direction.layer,
                                                         "also": [{"layer": d.layer, "coeff": d.coeff}
                                                                  for d in self.teacher.also],
                                                         **gate_record(getattr(self.teacher, "gate", None))},
                **self.provenance}

    # -------------------------------------------------------------------------------------- steps
    def step(self, step: int) -> dict:
        return optimizer_step(self, step)

    def run(self, save_every: int = 10, keep_checkpoints: int = 2, progress: bool = True,
            log: Callable[[str], None] | None = None) -> dict:
        """Train every step of the plan not done yet; `log` also gets a progress line (done / total, elapsed,
        remaining) at least every 30 s, which a log file keeps where the terminal bar does not."""
        total, metrics_path = len(self.plan), self.train_dir / "metrics.jsonl"
        started = time.perf_counter()
        last: dict = {}
        tick = (log_ticks(log, "distilling (steps)")(total - self.start_step)
                if log is not None and self.acc.is_main_process else lambda: None)
        with _progress(progress and self.acc.is_main_process) as bar:
            task = bar.add_task("distilling", total=total, completed=self.start_step, loss=float("nan"))
            for step in range(self.start_step, total):
                last = self.step(step)
                if self.acc.is_main_process:
                    with metrics_path.open("a") as handle:
                        handle.write(json.dumps(last) + "\n")
                bar.update(task, advance=1, loss=last["loss"])
                tick()
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


def _progress(enabled: bool) -> rp.Progress:
    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn(),
                       rp.TextColumn("loss {task.fields[loss]:.4f}"),
                       console=Console(stderr=True), disable=not enabled, transient=False)


def distill(run: str | Path, model, tokenizer, direction: Direction, instructions: Sequence[str],
            cfg: DistillConfig | None = None, *, safety_ids: Tensor | None = None, anchor_prompts: Sequence[str] = (),
            resume: bool = False, save_every: int = 10, keep_checkpoints: int = 2, progress: bool = True,
            on_checkpoint: Callable[[int, Path], None] | None = None, provenance: dict | None = None,
            prefills: Sequence[str] = (), teacher_also: Sequence[Direction] = (),
            teacher_gate: RowGate | RowMap | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Train `model` into RUN/train/ (metrics.jsonl, checkpoints/, model/, adapter/) and return the summary.
    `prefills` (one per instruction) begin the student's answers: it is trained on what it writes after them.
    `teacher_also`: further directions the teacher adds beside `direction` (`SteeredTeacher.also`); `teacher_gate`:
    the teacher steers only the prompts the gate passes (`GatedTeacher`), the base model elsewhere."""
    distiller = Distiller(run, model, tokenizer, direction, instructions, cfg or DistillConfig(),
                          safety_ids=safety_ids, anchor_prompts=anchor_prompts, provenance=provenance,
                          prefills=prefills, teacher_also=teacher_also, teacher_gate=teacher_gate)
    distiller.prepare(resume, on_checkpoint)
    return distiller.run(save_every, keep_checkpoints, progress, log)


__all__ = ["Distiller", "check_inputs", "check_safety_ids", "default_prompts", "distill"]
