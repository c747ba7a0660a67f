"""Contrast records: how much the steered teacher raises each token over the base model at each answer position.

For every prompt x and sample m we draw H-1 answer tokens y from pi_T, then teacher-force (x, y) through pi_T and
pi_0 and keep both full-vocabulary log-probs at the H positions that predict answer tokens 1..H. One (row, h) pair
is a *record*; Δ = log pi_T - log pi_0. Positions after pi_0's greedy choice ends the turn are invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.anatomy import final_norm
from safesteer_interp.core.chat import THINK_CLOSE, THINK_OPEN, ChatBatch
from safesteer_interp.core.generation import Generation, eos_token_ids
from safesteer_interp.core.scoring import View, answer_states, logits_from_states
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.teacher import adapters_disabled

# End-of-turn names the reference checks besides the tokenizer's EOS (whichever exist in the vocabulary).
END_OF_TURN_NAMES = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class ContrastConfig:
    """How the records are drawn (the reference's defaults)."""

    horizon: int = 5  # H: answer positions scored per sample
    samples: int = 8  # M: samples per prompt (sampling only when M > 1, as the reference)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 42
    batch_size: int = 32  # prompts per forward (each expands to M rows)

    def __post_init__(self):
        if self.horizon < 1 or self.samples < 1 or self.batch_size < 1:
            raise SafeSteerError(f"horizon, samples and batch size must be >= 1, got horizon={self.horizon}, "
                                 f"samples={self.samples}, batch_size={self.batch_size}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise SafeSteerError(f"need temperature > 0 and 0 < top_p <= 1, got temperature={self.temperature}, "
                                 f"top_p={self.top_p}")


@dataclass(frozen=True)
class ContrastRecords:
    """Teacher and base log-probs at every record, with what is needed to show the context of each."""

    lp_steered: Float[Tensor, "row horizon vocab"]  # log pi_T(v | x, y_<h), float32, CPU
    lp_base: Float[Tensor, "row horizon vocab"]  # log pi_0(v | x, y_<h)
    valid: Bool[Tensor, "row horizon"]  # False from the position where pi_0's argmax ends the turn
    prompt_index: Int[Tensor, " row"]  # which prompt each row answers
    continuation: Int[Tensor, "row prefix"]  # the H-1 sampled answer tokens (prefix = H - 1)
    prompts: list[str]
    final_rms: Float[Tensor, "row horizon"] | None = None  # RMS of the residual entering the final norm (pi_T)
    meta: dict = field(default_factory=dict)

    @property
    def delta(self) -> Float[Tensor, "row horizon vocab"]:
        return self.lp_steered - self.lp_base

    @property
    def horizon(self) -> int:
        return self.lp_steered.shape[1]

    @property
    def vocab(self) -> int:
        return self.lp_steered.shape[2]

    def rows(self, keep: Bool[Tensor, " row"]) -> ContrastRecords:
        """The records of a subset of rows (e.g. the rows of half of the prompts)."""
        return replace(self, lp_steered=self.lp_steered[keep], lp_base=self.lp_base[keep], valid=self.valid[keep],
                       prompt_index=self.prompt_index[keep], continuation=self.continuation[keep],
                       final_rms=None if self.final_rms is None else self.final_rms[keep])


# ----------------------------------------------------------------------------------------------- masking, banning
def end_of_turn_ids(model, tokenizer) -> list[int]:
    """Ids that end an assistant turn: EOS of the generation config and tokenizer, plus the reference's names."""
    ids = set(eos_token_ids(model, tokenizer))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[name] for name in END_OF_TURN_NAMES if name in vocab)
    return sorted(ids)


def valid_positions(base_argmax: Int[Tensor, "row horizon"], eot_ids: Sequence[int]) -> Bool[Tensor, "row horizon"]:
    """False at and after the first position whose base greedy token ends the turn.

    Why the base's argmax: once pi_0 would have stopped, later positions score a continuation the student would
    not write, so their contrast says nothing about its behaviour (the reference's rule).
    """
    ended = torch.isin(base_argmax, torch.tensor(list(eot_ids), dtype=base_argmax.dtype, device=base_argmax.device))
    return ended.long().cumsum(-1) == 0


def special_token_mask(tokenizer, vocab: int) -> Bool[Tensor, " vocab"]:
    """Tokens S may never contain: the tokenizer's special ids, every token whose string contains '<|', and the
    think-block markers of reasoning templates (added but not special tokens in Qwen3: prompts close the block
    before the answer, so a marker in S would train the student to reopen thinking inside its answer).

    Ids the tokenizer cannot decode (embedding rows padded past its length, e.g. Qwen's 151936 vs 151665) are
    banned too: they are never trained and could only enter S as noise.
    """
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[[i for i in tokenizer.all_special_ids if i < vocab]] = True
    for token, idx in tokenizer.get_vocab().items():
        if ("<|" in token or token in (THINK_OPEN, THINK_CLOSE)) and idx < vocab:
            banned[idx] = True
    banned[len(tokenizer):] = True
    return banned


# ----------------------------------------------------------------------------------------------- scoring
@contextmanager
def _final_norm_inputs(model) -> Iterator[list[Tensor]]:
    """The residual entering the final norm (the last block's output) of every forward inside the block."""
    norm, _ = final_norm(model)
    found: list[Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _module, args: found.append(args[0].detach()))
    try:
        yield found
    finally:
        handle.remove()


def _scored(model, batch: ChatBatch, continuation: Int[Tensor, "row prefix"], view: View,
            ) -> tuple[Float[Tensor, "row horizon vocab"], Float[Tensor, "row horizon"]]:
    """log-probs at the H positions that predict answer tokens 1..H of each row (its prompt + sampled tokens), and
    the RMS of the residual entering the final norm there (what the norm divides by: the scale of direct logit
    attribution). Each prompt runs once for its rows (`scoring.answer_states`): 1/M of the prompt compute."""
    rows, n = len(continuation), len(batch)
    row_prompt = torch.arange(n).repeat_interleave(rows // n)  # rows of one prompt are consecutive, as `generate`
    after = torch.zeros(rows, 1, dtype=torch.long)  # a column past the last token: it is never an input
    ids = torch.cat([batch.input_ids[row_prompt], continuation.to(batch.input_ids), after], 1)
    mask = torch.cat([batch.attention_mask[row_prompt],
                      torch.ones(rows, continuation.shape[1] + 1, dtype=batch.attention_mask.dtype)], 1)
    with _final_norm_inputs(model) as resid:
        states = answer_states(model, Generation(ids, mask, batch.input_ids.shape[1], row_prompt), view)
    logp = torch.log_softmax(logits_from_states(model, states).float(), -1).cpu()
    resid_at = torch.cat([resid[0][row_prompt.to(resid[0].device), -1:], *resid[1:]], 1)  # prompt's last, answers
    return logp, resid_at.float().pow(2).mean(-1).sqrt().cpu()


@torch.no_grad()
def score_contrast(teacher, prompts: Sequence[str], config: ContrastConfig = ContrastConfig(), *,
                   progress: Callable[[int], None] | None = None) -> ContrastRecords:
    """Sample H-1 tokens from the teacher, then teacher-force them through pi_T and pi_0 (the reference's step 1-5).

    `teacher` is a `SteeredTeacher` or `PromptTeacher`; `progress(n)` is called after each batch of n prompts.
    Each prompt is prefilled once for its M samples, in sampling and in both scoring passes.
    Memory: two float32 tensors of rows x H x vocab on CPU (32 prompts x 8 x 5 x 152k ~ 0.8 GB each).
    """
    prompts = list(prompts)
    if not prompts:
        raise SafeSteerError("no prompts to select safety tokens on: the prompt list is empty")
    if not getattr(teacher, "shares_prompt_pass", True):
        raise SafeSteerError(f"a {teacher.kind} teacher does not select safety tokens: S comes from the run's "
                             "stage-2 teacher (the steered or the prompt teacher)")
    H, M = config.horizon, config.samples
    lp_s, lp_b, cont, index, rms = [], [], [], [], []

    def steered_view(ids, prompt_columns):  # a prompt-only teacher steers no answer column
        return teacher.active(teacher.scoring_positions(ids, prompt_columns))

    def base_view(_ids, _prompt_columns):
        return adapters_disabled(teacher.model)

    for b, start in enumerate(range(0, len(prompts), config.batch_size)):
        chunk = prompts[start:start + config.batch_size]
        steered_prompt = teacher.encode(chunk)
        if H > 1:  # exactly H-1 tokens (min = max, so the turn cannot end early); sampled when M > 1
            gen = teacher.generate(chunk, max_new_tokens=H - 1, min_new_tokens=H - 1, do_sample=M > 1,
                                   temperature=config.temperature, top_p=config.top_p, num_return_sequences=M,
                                   seed=config.seed + 7919 * b, share_prompt=True)
            continuation = gen.sequences[:, gen.prompt_length:].cpu()
        else:  # H = 1: nothing to sample; the M copies are identical, as in the reference
            continuation = torch.zeros(len(chunk) * M, 0, dtype=torch.long)
        steered, final_rms = _scored(teacher.model, steered_prompt, continuation, steered_view)
        base_prompt = steered_prompt if teacher.base_system == teacher.system else teacher.base_encode(chunk)
        lp_s.append(steered)
        lp_b.append(_scored(teacher.model, base_prompt, continuation, base_view)[0])
        rms.append(final_rms)
        cont.append(continuation)
        index.append(torch.arange(start, start + len(chunk)).repeat_interleave(M))
        if progress is not None:
            progress(len(chunk))
    lp_steered, lp_base = torch.cat(lp_s), torch.cat(lp_b)
    eot = end_of_turn_ids(teacher.model, teacher.tokenizer)
    return ContrastRecords(lp_steered, lp_base, valid_positions(lp_base.argmax(-1), eot), torch.cat(index),
                           torch.cat(cont), prompts, torch.cat(rms),
                           meta={"end_of_turn_ids": eot, **config.__dict__, "teacher": teacher.kind})


def context_text(tokenizer, records: ContrastRecords, row: int, position: int) -> tuple[str, str]:
    """(prompt, answer prefix) seen at record (row, position): the prompt and the first `position` sampled tokens."""
    prefix = records.continuation[row, :position].tolist()
    return records.prompts[int(records.prompt_index[row])], tokenizer.decode(prefix, skip_special_tokens=False)


def flatten_valid(x: Float[Tensor, "row horizon vocab"], valid: Bool[Tensor, "row horizon"],
                  ) -> Float[Tensor, "record vocab"]:
    """Only the valid records, as one [record, vocab] matrix (record = (row, h) in row-major order)."""
    return einops.rearrange(x, "row horizon vocab -> (row horizon) vocab")[valid.flatten()]


__all__ = ["ContrastConfig", "ContrastRecords", "END_OF_TURN_NAMES", "context_text", "end_of_turn_ids",
           "flatten_valid", "score_contrast", "special_token_mask", "valid_positions"]
