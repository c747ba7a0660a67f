"""A policy is a model seen through a context: the same weights can be the base, the steered teacher or the student.

`Policy(model, tokenizer, context)` answers and scores only inside `with policy.active():`. A plain model needs no
context; the steered teacher is `teacher.active` (steering hook on, adapters off); the base of a LoRA student is
`model.disable_adapter()`. Evaluation code takes policies, so one function covers all three without copying weights.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from jaxtyping import Int
from torch import Tensor, nn

from safesteer_interp.errors import SafeSteerError
from safesteer_interp.teacher import PromptTeacher, SteeredTeacher, Teacher, adapters_disabled


@dataclass(frozen=True)
class Policy:
    """`model` behaves as this policy while `active()` is entered (and only then)."""

    model: nn.Module
    tokenizer: object
    context: Callable[[], AbstractContextManager] = field(default=nullcontext)
    label: str = "model"  # for artifacts: how the view was built
    # the view for one teacher-forced pass over prompt + answer, given where the prompts end (a teacher steering
    # prompt tokens must not steer answer tokens instead); None: the same as `context`
    scoring_context: Callable[[Tensor, int | Tensor], AbstractContextManager] | None = None

    def active(self) -> AbstractContextManager:
        return self.context()

    def scoring(self, input_ids: Int[Tensor, "batch pos"], prompt_length: int | Int[Tensor, " batch"],
                ) -> AbstractContextManager:
        """`active()` for a forward over prompt + answer columns; `prompt_length`: the padded prompt width, or the
        column where each row's answer starts."""
        return self.scoring_context(input_ids, prompt_length) if self.scoring_context else self.context()


def plain(model: nn.Module, tokenizer) -> Policy:
    """The model as it is (a peft model answers with its adapters on)."""
    return Policy(model, tokenizer, nullcontext, "plain")


def steered(teacher: Teacher) -> Policy:
    """The safety teacher: the base weights plus the steering hook (adapters off for a LoRA student's model)."""
    return Policy(teacher.model, teacher.tokenizer, teacher.active, f"{teacher.kind} teacher",
                  lambda ids, prompt_length: teacher.active(teacher.scoring_positions(ids, prompt_length)))


def adapters_off(model: nn.Module, tokenizer) -> Policy:
    """The base model under a LoRA student: same object, adapters disabled for the duration of the block."""
    if not hasattr(model, "disable_adapter"):
        raise SafeSteerError("base='adapters' needs a peft model (one with adapters to disable); pass the base "
                             "model itself instead")
    return Policy(model, tokenizer, lambda: adapters_disabled(model), "adapters off")


def as_policy(obj, tokenizer) -> Policy:
    """Accept a Policy, a SteeredTeacher or a plain model, so callers pass whatever they hold."""
    if isinstance(obj, Policy):
        return obj
    if isinstance(obj, (SteeredTeacher, PromptTeacher)):
        return steered(obj)
    if isinstance(obj, nn.Module):
        return plain(obj, tokenizer)
    raise SafeSteerError(f"cannot evaluate a {type(obj).__name__}; pass a model, a SteeredTeacher or a Policy")


def resolve_base(base, model: Policy) -> Policy | None:
    """The reference policy of the KL drift: None (no drift), 'adapters' (the peft model's own base), or any
    policy-like object (a separate base model, the unsteered model under a teacher)."""
    if base is None:
        return None
    if isinstance(base, str):
        if base != "adapters":
            raise SafeSteerError(f"base={base!r} is not understood; pass None, 'adapters' or a model")
        return adapters_off(model.model, model.tokenizer)
    return as_policy(base, model.tokenizer)


__all__ = ["Policy", "adapters_off", "as_policy", "plain", "resolve_base", "steered"]
