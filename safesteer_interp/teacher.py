"""The safety teacher: the frozen model plus activation addition of the refusal direction (or a safety prompt).

A teacher is not a second model. It is the same weights seen through a context manager: `with teacher.active():`
adds `coeff * r` at `blocks.{layer}.hook_resid_pre` (all positions as the reference, or prompt tokens only, or the
last prompt token: `Direction.positions`), and for a peft student it also disables the adapters, so teacher and
student share one copy of the weights.

Contrast pairs: `teacher.encode` / `teacher.logits` is pi_T on the teacher's view of a prompt, `teacher.base_encode` /
`teacher.base_logits` is pi_0 on the student's view (the same ids for the vector teacher; the reference's empty
system prompt for the prompt teacher). The gated teacher steers only the prompts a harm gate passes (CAST-style):
on every other prompt it *is* the base model. The mapped teacher steers each prompt by its own vector, h @ a matrix
fitted to vanish on benign prompts (AlphaSteer's null-space map): a soft gate.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from safesteer_interp.core.chat import ChatBatch, encode_prompts, has_system_role
from safesteer_interp.core.generation import Generation, generate
from safesteer_interp.core.hooks import Positions, RowGate, RowMap, add_to_resid, gated_addition, mapped_addition
from safesteer_interp.core.scoring import forward_logits
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.errors import SafeSteerError

SAFETY_SYSTEM_PROMPT = ("You are a safety-conscious assistant. Never produce harmful, unsafe, or disallowed "
                        "content")  # the reference's wording, without a trailing period, as published

TeacherKind = Literal["vector", "prompt", "gated", "mapped"]


class Teacher(Protocol):
    """What callers use of a teacher: pi_T inside `active()`, pi_0 (steering and adapters off) via `base_*`."""

    kind: TeacherKind
    model: nn.Module
    tokenizer: Any
    direction: Direction | None  # None: the prompt teacher steers nothing
    coeff: float  # 0.0 for the prompt teacher
    positions: Positions
    system: str | None  # the system prompt of the teacher's view (None: the student's view)
    base_system: str | None
    # False: a teacher-forced pass must carry each row's prompt with its answer (a gate is read on the prompt), so
    # scorers may not run a prompt once for its rows (`scoring.answer_states(share_prompt=False)`)
    shares_prompt_pass: bool

    def active(self, positions: Positions | None = None) -> AbstractContextManager[None]: ...

    def scoring_positions(self, input_ids: Int[Tensor, "batch pos"],
                          prompt_length: int | Int[Tensor, " batch"] | None,
                          prefill_tokens: Int[Tensor, " batch"] | None = None) -> Positions: ...

    def logits(self, batch: ChatBatch, last: int | None = None, *,
               prompt_length: int | None = None) -> Float[Tensor, "batch pos vocab"]: ...

    def base_logits(self, batch: ChatBatch, last: int | None = None) -> Float[Tensor, "batch pos vocab"]: ...

    def encode(self, instructions: Sequence[str]) -> ChatBatch: ...

    def base_encode(self, instructions: Sequence[str]) -> ChatBatch: ...

    def generate(self, instructions: Sequence[str], **kwargs) -> Generation: ...


# ----------------------------------------------------------------------------------------------- shared behaviour
def adapters_disabled(model) -> AbstractContextManager:
    """pi_0, the unsteered base model (adapters off for a peft student): what the teacher is contrasted with."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@torch.no_grad()
def _teacher_logits(teacher: Teacher, batch: ChatBatch, last: int | None = None, *,
                    prompt_length: int | None = None) -> Float[Tensor, "batch pos vocab"]:
    """pi_T's logits on `batch`; `last=k` keeps only the last k positions (no full [pos, vocab] tensor).

    `prompt_length` (the padded prompt width) is needed only for a teacher steering prompt tokens only.
    """
    with teacher.active(teacher.scoring_positions(batch.input_ids, prompt_length)):
        return forward_logits(teacher.model, batch, last)


@torch.no_grad()
def _base_logits(teacher: Teacher, batch: ChatBatch, last: int | None = None) -> Float[Tensor, "batch pos vocab"]:
    """pi_0's logits on `batch` (steering off, adapters off): the side the teacher is contrasted with."""
    with adapters_disabled(teacher.model):
        return forward_logits(teacher.model, batch, last)


def _encode(teacher: Teacher, instructions: Sequence[str]) -> ChatBatch:
    """The teacher's view of the prompts."""
    return encode_prompts(teacher.tokenizer, instructions, teacher.system)


def _base_encode(teacher: Teacher, instructions: Sequence[str]) -> ChatBatch:
    """The base model's (and student's) view of the prompts."""
    return encode_prompts(teacher.tokenizer, instructions, teacher.base_system)


def _generate(teacher: Teacher, instructions: Sequence[str], **kwargs) -> Generation:
    with teacher.active():
        return generate(teacher.model, teacher.tokenizer, _encode(teacher, instructions), **kwargs)


# ----------------------------------------------------------------------------------------------- the two teachers
class SteeredTeacher:
    """pi_T: the base model with `coeff * direction` added at one layer."""

    kind: TeacherKind = "vector"
    shares_prompt_pass = True
    logits, base_logits, encode, base_encode, generate = (_teacher_logits, _base_logits, _encode, _base_encode,
                                                          _generate)

    def __init__(self, model, tokenizer, direction: Direction, *, coeff: float | None = None,
                 positions: Positions | None = None, also: Sequence[Direction] = ()):
        self.model, self.tokenizer, self.direction = model, tokenizer, direction
        # further additions, each `d.coeff * d.vector` at its own layer on every position (`safesteer-recover`'s
        # refusing-answer direction beside stage 1's)
        self.also = tuple(also)
        if any(d.positions != "all" for d in self.also):
            raise SafeSteerError("a teacher's further directions steer every position; set their positions to 'all'")
        self.coeff = direction.coeff if coeff is None else coeff
        self.positions = direction.positions if positions is None else positions  # the direction stage's choice
        self.system: str | None = None  # the teacher sees the same prompt as the student
        self.base_system: str | None = None

    @contextmanager
    def active(self, positions: Positions | None = None) -> Iterator[None]:
        """Inside this block the model *is* the teacher (adapters off if any, steering on at `self.positions`)."""
        with ExitStack() as stack:
            stack.enter_context(adapters_disabled(self.model))
            stack.enter_context(add_to_resid(self.model, self.direction.vector, self.direction.layer,
                                             self.coeff, self.positions if positions is None else positions))
            for extra in self.also:
                stack.enter_context(add_to_resid(self.model, extra.vector, extra.layer, extra.coeff, "all"))
            yield

    def scoring_positions(self, input_ids: Int[Tensor, "batch pos"], prompt_length: int | Int[Tensor, " batch"] | None,
                          prefill_tokens: Int[Tensor, " batch"] | None = None) -> Positions:
        """Where to steer in a teacher-forced pass over prompt + answer tokens (`input_ids`: the padded block).

        "prompt", "last" and k mean prompt tokens: in `generate` that is the prefill, but in one forward over
        prompt + answer they are the columns before `prompt_length` (left padding aligns them across rows), so they
        need an explicit mask; without `prompt_length` the hook would steer answer tokens instead. A begun answer
        (`prefill_tokens`) counts as prompt here, as it does in `generate`.
        """
        if isinstance(self.positions, Tensor) or self.positions == "all":
            return self.positions
        if prompt_length is None:
            raise SafeSteerError(f"teacher steers positions={self.positions!r}: pass prompt_length when scoring "
                                 "prompt + answer sequences")
        ends = torch.as_tensor(prompt_length).expand(input_ids.shape[0])  # per row: the column after the prompt
        columns = torch.arange(input_ids.shape[1])[None, :]
        if self.positions == "prompt":
            return columns < ends[:, None]
        k = 1 if self.positions == "last" else int(self.positions)
        return (columns < ends[:, None]) & (columns >= ends[:, None] - k)


@dataclass(frozen=True)
class GatedPositions:
    """Where a gated teacher steers in one teacher-forced pass: the steered teacher's positions, and the column
    where each row's prompt ends (the gate reads the prompt there)."""

    steer: Positions
    prompt_end: int | Tensor | None  # None: the pass holds prompts only


class GatedTeacher(SteeredTeacher):
    """pi_T on the prompts a harm gate passes, pi_0 on the others: stage 1's steering (and any further addition)
    applied only to rows whose `resid_pre` at the gate's layer and prompt position projects at or above its
    threshold onto the gate's direction (`core.hooks.gated_addition`)."""

    kind: TeacherKind = "gated"
    shares_prompt_pass = False

    def __init__(self, model, tokenizer, direction: Direction, gate: RowGate, *, coeff: float | None = None,
                 positions: Positions | None = None, also: Sequence[Direction] = ()):
        super().__init__(model, tokenizer, direction, coeff=coeff, positions=positions, also=also)
        self.gate = gate
        self.last_gate: dict[str, Tensor] = {}  # {"fired", "projection"} of the last prompt forward, to inspect

    @contextmanager
    def active(self, positions: Positions | GatedPositions | None = None) -> Iterator[None]:
        """The teacher's view: adapters off, the additions on the rows the gate passes. `positions`: a
        `GatedPositions` from `scoring_positions` for a teacher-forced pass, else where to steer in `generate`."""
        steer, end = self._where(positions)
        additions = [(self.direction.vector, self.direction.layer, self.coeff, steer),
                     *((d.vector, d.layer, d.coeff, "all") for d in self.also)]
        with adapters_disabled(self.model), gated_addition(self.model, additions, self.gate, prompt_end=end) as state:
            self.last_gate = state
            yield

    def _where(self, positions: Positions | GatedPositions | None) -> tuple[Positions, int | Tensor | None]:
        """(where to steer, where each prompt ends): a teacher-forced pass's `GatedPositions`, else `generate`'s."""
        if isinstance(positions, GatedPositions):
            return positions.steer, positions.prompt_end
        return (self.positions if positions is None else positions), None

    def scoring_positions(self, input_ids: Int[Tensor, "batch pos"], prompt_length: int | Int[Tensor, " batch"] | None,
                          prefill_tokens: Int[Tensor, " batch"] | None = None) -> GatedPositions:
        """The steered teacher's positions for a pass over prompt + answer, and where the requests end (None: the
        batch holds prompts only, which end at its last column). The gate reads the request, not a begun answer:
        with `prefill_tokens` it reads that many columns before the prompt block's end (`safesteer-recover-gated`:
        a compliant prefill drags stage 1's projection down, the request's end still carries it)."""
        end = prompt_length
        if prefill_tokens is not None:
            width = input_ids.shape[1] if prompt_length is None else prompt_length
            end = torch.as_tensor(width, device=input_ids.device) - prefill_tokens.to(input_ids.device)
        return GatedPositions(super().scoring_positions(input_ids, prompt_length), end)


class MappedTeacher(GatedTeacher):
    """pi_T adding coeff * (h @ matrix) per row, h the row's prompt `resid_pre` at the map's layer and position
    (`core.hooks.mapped_addition`): a null-space map sends benign prompts' h to ~0 (the base model there) and
    harmful prompts' to ~ stage 1's direction (`direction.null_space`). Stage 1's direction names the layer, the
    position and the coefficient; its vector is what the map was fitted to reproduce."""

    kind: TeacherKind = "mapped"

    def __init__(self, model, tokenizer, direction: Direction, row_map: RowMap, *, coeff: float | None = None,
                 positions: Positions | None = None):
        if row_map.layer != direction.layer:
            raise SafeSteerError(f"the steering map reads layer {row_map.layer} but the direction steers layer "
                                 f"{direction.layer}: fit the map at the direction's layer")
        super().__init__(model, tokenizer, direction, RowGate(direction.layer, direction.unit, float("-inf")),
                         coeff=coeff, positions=positions)
        self.gate = row_map  # what decides how far each row is steered (train/config.json, the resume identity)

    @contextmanager
    def active(self, positions: Positions | GatedPositions | None = None) -> Iterator[None]:
        """The teacher's view: adapters off, each row's own vector added. `positions` as `GatedTeacher.active`."""
        steer, end = self._where(positions)
        with adapters_disabled(self.model), mapped_addition(self.model, self.gate, self.coeff, steer,
                                                            prompt_end=end) as state:
            self.last_gate = state
            yield


class PromptTeacher:
    """The reference's second mode: the unsteered model with a safety system prompt in front of each request."""

    kind: TeacherKind = "prompt"
    shares_prompt_pass = True
    logits, base_logits, encode, base_encode, generate = (_teacher_logits, _base_logits, _encode, _base_encode,
                                                          _generate)

    def __init__(self, model, tokenizer, system: str = SAFETY_SYSTEM_PROMPT, base_system: str | None = ""):
        if not has_system_role(tokenizer):
            raise SafeSteerError("--teacher prompt needs a chat template with a system role, and this model's "
                                 "template has none; use --teacher vector")
        self.model, self.tokenizer, self.system = model, tokenizer, system
        # The reference's baseline (and student) prompt carries an *empty* system turn, not none: with templates
        # that insert a default system prompt when none is given (Qwen2.5) the two differ.
        self.base_system = base_system
        self.direction: Direction | None = None
        self.coeff, self.positions = 0.0, "all"

    def active(self, positions: Positions | None = None) -> AbstractContextManager[None]:
        """Adapters off, nothing steered: the system prompt (in `encode`) does the work."""
        return adapters_disabled(self.model)

    def scoring_positions(self, input_ids: Int[Tensor, "batch pos"], prompt_length: int | Int[Tensor, " batch"] | None,
                          prefill_tokens: Int[Tensor, " batch"] | None = None) -> Positions:
        return "all"  # nothing is steered; the system prompt does the work


def make_teacher(model, tokenizer, kind: TeacherKind = "vector", direction: Direction | None = None, *,
                 coeff: float | None = None, positions: Positions | None = None) -> Teacher:
    """The teacher of `kind`: the steered model (needs a direction) or the safety-system-prompt model."""
    if kind == "vector":
        if direction is None:
            raise SafeSteerError("the vector teacher needs a refusal direction; run the direction stage first")
        return SteeredTeacher(model, tokenizer, direction, coeff=coeff, positions=positions)
    if kind == "prompt":
        return PromptTeacher(model, tokenizer)
    raise SafeSteerError(f"--teacher must be 'vector' or 'prompt', not {kind!r}")


__all__ = ["SAFETY_SYSTEM_PROMPT", "GatedPositions", "GatedTeacher", "MappedTeacher", "PromptTeacher",
           "SteeredTeacher", "Teacher", "TeacherKind", "adapters_disabled", "make_teacher"]
