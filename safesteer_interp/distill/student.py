"""Student and teacher of the distillation: one weight copy by default, two with full fine-tuning.

LoRA student: adapters on the model; the teacher is the same model with adapters disabled plus the steering hook,
so the frozen weights exist once. Full fine-tuning: the student trains every weight, so the teacher is a frozen
copy (optionally on another device). Either way the final model is written in plain HF format.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch import nn

from safesteer_interp.core.anatomy import base_model
from safesteer_interp.core.hooks import RowGate, RowMap
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.teacher import GatedTeacher, MappedTeacher, SteeredTeacher, Teacher

ALL_LINEAR = "all-linear"  # peft: every linear layer except the output head


def disable_dropout(model: nn.Module) -> nn.Module:
    """Zero every dropout, so scoring in train mode (needed by gradient checkpointing) is the sampling policy."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def check_lora_targets(model: nn.Module, targets: str | list[str]) -> str | list[str]:
    """Fail with one line when a requested module name matches nothing (peft's own error is a long dump)."""
    if targets == ALL_LINEAR:
        return targets
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise SafeSteerError(f"LoRA target modules not found in the model: {', '.join(missing)}; its linear layers "
                             f"are {', '.join(leaves)} (or use '{ALL_LINEAR}')")
    return targets


def lora_student(model: nn.Module, r: int = 16, alpha: float | None = None, targets: str | list[str] = ALL_LINEAR):
    """Wrap the model with fresh LoRA adapters (B = 0, so the student starts as the base model)."""
    from peft import LoraConfig, get_peft_model  # lazy: peft is slow to import and only LoRA runs need it

    if r < 1:
        raise SafeSteerError(f"--lora-r {r} must be >= 1")
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=0.0,
                        target_modules=check_lora_targets(model, targets), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' renamed `is_gradient_checkpointing` (v6 deprecation)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def make_pair(model: nn.Module, tokenizer, direction: Direction, *, full_ft: bool = False, lora_r: int = 16,
              lora_alpha: float | None = None, lora_targets: str | list[str] = ALL_LINEAR,
              teacher_device: str | None = None, teacher_positions: str | None = None,
              teacher_also: Sequence[Direction] = (), teacher_gate: RowGate | RowMap | None = None,
              ) -> tuple[nn.Module, Teacher]:
    """(student, teacher). The teacher never has gradients; the student's trainable parameters are the only ones.

    `teacher_positions`: where the teacher steers, "all" (the reference), "prompt" (prompt tokens only) or "last"
    (the last prompt token only);
    None: the direction's own choice (`Direction.positions`, set by the direction stage). `teacher_also`: further
    directions the teacher adds (`SteeredTeacher.also`). `teacher_gate`: the teacher steers only the prompts this
    gate passes (`GatedTeacher`), or each prompt by its own vector from this map (`MappedTeacher`).
    """
    disable_dropout(model)
    if full_ft:
        frozen = copy.deepcopy(model).requires_grad_(False).eval()
        if teacher_device:
            frozen.to(teacher_device)
        model.requires_grad_(True)
        return model, _teacher(frozen, tokenizer, direction, teacher_positions, teacher_also, teacher_gate)
    if teacher_device:
        raise SafeSteerError("--teacher-device needs --full-ft: with LoRA the teacher shares the student's weights")
    student = lora_student(model, lora_r, lora_alpha, lora_targets)
    return student, _teacher(student, tokenizer, direction, teacher_positions, teacher_also, teacher_gate)


def _teacher(model, tokenizer, direction: Direction, positions: str | None, also: Sequence[Direction],
             gate: RowGate | RowMap | None) -> SteeredTeacher:
    if gate is None:
        return SteeredTeacher(model, tokenizer, direction, positions=positions, also=also)
    if isinstance(gate, RowMap):
        if also:
            raise SafeSteerError("a mapped teacher adds stage 1's direction only; it takes no further directions")
        return MappedTeacher(model, tokenizer, direction, gate, positions=positions)
    return GatedTeacher(model, tokenizer, direction, gate, positions=positions, also=also)


@contextmanager
def merged_adapters(model: nn.Module) -> Iterator[None]:
    """Inside the block a LoRA student runs as plain layers: each adapted layer is replaced by its base layer holding
    a merged copy W + delta; the LoRA layers and the original weight tensors are put back afterwards.

    For sampling: decoding feeds one token per row at a time, where peft's two extra small matmuls and its Python
    wrapper per layer cost about as much as the layer itself. The copies last for the block (one more copy of the
    adapted weights); putting the original tensors back, rather than unmerging by subtraction, leaves the teacher's
    base weights bit-exact. A plain model, or adapters peft does not merge as W + delta (e.g. DoRA), runs as it is.
    """
    from peft.tuners.lora import LoraLayer  # lazy: peft is slow to import and only LoRA runs need it

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not layers or any(m.merged or m.lora_variant for _, m in layers):
        yield
        return
    swapped = []  # (parent, attribute, LoRA layer, base layer, base weight)

    def restore() -> None:
        for parent, attribute, layer, base, weight in swapped:
            base.weight = weight
            setattr(parent, attribute, layer)

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.callback(restore)
        for name, layer in layers:
            parent, _, attribute = name.rpartition(".")
            base = layer.get_base_layer()
            swapped.append((model.get_submodule(parent), attribute, layer, base, base.weight))
            base.weight = nn.Parameter(_merged_weight(layer, base), requires_grad=False)
            setattr(swapped[-1][0], attribute, base)
        yield


def _merged_weight(layer, base: nn.Module) -> torch.Tensor:
    """W + delta of one LoRA layer: one fused W + scaling * B @ A for a plain linear layer and one adapter (as fast
    as a copy of W), else peft's own delta."""
    names = [a for a in layer.active_adapters if a in layer.lora_A.keys()]
    w = base.weight
    if len(names) == 1 and isinstance(base, nn.Linear) and not getattr(layer, "fan_in_fan_out", False):
        a, b = layer.lora_A[names[0]].weight, layer.lora_B[names[0]].weight
        if a.dtype == b.dtype == w.dtype:
            return torch.addmm(w, b, a, alpha=layer.scaling[names[0]])
    return w + sum(layer.get_delta_weight(name) for name in names).to(w.dtype)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter for everything the optimizer updates (tied weights appear once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _replace_dir(tmp: Path, final: Path) -> None:
    # A directory cannot be os.replace()d over a non-empty one: move the old one aside first, then drop it.
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_final(student: nn.Module, tokenizer, out: Path) -> tuple[nn.Module, dict[str, str]]:
    """Write `out/model` (merged HF weights + tokenizer, loadable by `load_model`) and, for LoRA, `out/adapter`.

    A LoRA student is merged in place (no second copy of a large model at the end of training): the returned
    model is the plain merged model, and the PeftModel passed in must not be used afterwards.
    """
    written = {}
    if hasattr(student, "peft_config"):
        tmp = out / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        student.save_pretrained(tmp)
        _replace_dir(tmp, out / "adapter")
        written["adapter"] = str(out / "adapter")
        merged = student.merge_and_unload()
    else:
        merged = base_model(student)
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _replace_dir(tmp, out / "model")
    written["model"] = str(out / "model")
    return merged, written


__all__ = ["ALL_LINEAR", "check_lora_targets", "disable_dropout", "lora_student", "make_pair", "merged_adapters",
           "save_final", "trainable"]
