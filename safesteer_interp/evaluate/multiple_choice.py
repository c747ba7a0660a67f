"""Multiple-choice capability (MMLU-style) by log-likelihood: the model picks the choice it finds most probable.

Each item is a question with choices and the index of the right one, read from a local JSON / JSONL / CSV file or a
`datasets` name (`name` or `name:subset`, cache only). `letter` mode lists the choices as A., B., ... and scores
the answer letter (MMLU's convention); `text` mode scores each choice's own text as the answer. No generation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float

from safesteer_interp.core.chat import batch_from_ids, render_prompts
from safesteer_interp.data.files import LOCAL_SUFFIXES, read_rows
from safesteer_interp.data.sources import load_source, lookup
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.policies import Policy

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
Mode = Literal["letter", "text"]


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices


# ----------------------------------------------------------------------------------------------- loading
def _choices(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):  # CSV cells hold the list as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise SafeSteerError(f"{where}: 'choices' must be a list (in CSV: a JSON list such as "
                                 f"[\"a\", \"b\"]), got {value[:40]!r}") from err
    if not isinstance(value, list | tuple) or len(value) < 2 or not all(isinstance(c, str | int | float)
                                                                        for c in value):
        raise SafeSteerError(f"{where}: 'choices' must be a list of at least two strings, got {value!r:.60}")
    return tuple(str(c) for c in value)


def _answer(value, choices: tuple[str, ...], where: str) -> int:
    """An index, a digit string, a letter (A, B, ...) or the text of the right choice."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return value
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 1 and text.upper() in LETTERS[:len(choices)]:
            return LETTERS.index(text.upper())
        if text in choices:
            return choices.index(text)
    raise SafeSteerError(f"{where}: 'answer' {value!r} is not an index, letter or choice of its {len(choices)} "
                         "choices")


def parse_items(rows: list, where: str) -> list[MCItem]:
    """Rows with question / choices / answer columns, checked row by row."""
    if not rows:
        raise SafeSteerError(f"{where} has no rows; a multiple-choice set needs question, choices and answer")
    items = []
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise SafeSteerError(f"{where} row {number} is a {type(row).__name__}; expected an object")
        missing = [c for c in ("question", "choices", "answer") if c not in row]
        if missing:
            raise SafeSteerError(f"{where} row {number} has no '{missing[0]}' column (columns: "
                                 f"{', '.join(map(str, row)) or 'none'}); a multiple-choice set needs question, "
                                 "choices and answer")
        choices = _choices(row["choices"], f"{where} row {number}")
        items.append(MCItem(str(row["question"]).strip(), choices, _answer(row["answer"], choices,
                                                                           f"{where} row {number}")))
    return items


def _hub_rows(source: str, split: str) -> list:
    import datasets  # lazy: datasets (pyarrow) is heavy and only hub ids need it

    name, _, subset = source.partition(":")
    try:
        data = datasets.load_dataset(name, subset or None, split=split)
    except Exception as err:  # offline (ConnectionError), unknown name (FileNotFoundError), bad split (ValueError)
        first = (str(err.__cause__ or err).splitlines() or [type(err).__name__])[0]
        raise SafeSteerError(f"could not load multiple-choice dataset '{source}' (split '{split}') from the hub or "
                             f"its cache ({first}); pass a local .json/.jsonl/.csv with question, choices and answer "
                             "columns instead") from err
    return [dict(row) for row in data]


def load_items(source: str | Path, split: str = "test", limit: int | None = None) -> list[MCItem]:
    """The first `limit` items (all when None) of a local file, a named source (`mmlu`, `mmlu=PATH`; see `sources`)
    or a `datasets` name (`name` or `name:subset`)."""
    path = Path(source).expanduser()
    named = lookup(str(source))
    if named is not None:
        rows, where = load_source(*named, want="multiple_choice")
        items = parse_items(rows, where)
    elif path.is_file():
        items = parse_items(read_rows(path, "multiple-choice file"), str(path))
    elif path.suffix.lower() in LOCAL_SUFFIXES or str(source).startswith((".", "/", "~")) or path.is_dir():
        raise SafeSteerError(f"multiple-choice file {source} not found; pass an existing .json/.jsonl/.csv file or a "
                             "dataset name")
    else:
        items = parse_items(_hub_rows(str(source), split), f"dataset '{source}'")
    return items if limit is None else items[:limit]


# ----------------------------------------------------------------------------------------------- scoring
def prompt_and_continuations(item: MCItem, mode: Mode) -> tuple[str, list[str]]:
    """The user turn and the candidate assistant answers of one item."""
    if mode == "letter":
        listed = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return (f"{item.question}\n{listed}\nAnswer with the letter of the correct choice.",
                list(LETTERS[:len(item.choices)]))
    if mode == "text":
        return item.question, list(item.choices)
    raise SafeSteerError(f"multiple-choice mode {mode!r} is not one of letter, text")


@torch.no_grad()
def continuation_logliks(policy: Policy, prompts: Sequence[str], continuations: Sequence[str],
                         batch_size: int = 16) -> list[float]:
    """sum_t log p(continuation token t | rendered prompt, earlier tokens), one float per (prompt, continuation)."""
    tokenizer, device = policy.tokenizer, next(policy.model.parameters()).device
    pad = tokenizer.pad_token_id
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = render_prompts(tokenizer, list(prompts[start:start + batch_size]))
        conts = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations[start:start + batch_size]]
        if any(len(c) == 0 for c in conts):
            raise SafeSteerError("a multiple-choice continuation tokenizes to nothing; check the choices")
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + c for t, c in zip(texts, conts)]
        width, longest = max(map(len, rows)), max(map(len, conts))
        # Left padding puts every continuation at the right edge: its logits are the same slice in every row.
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        batch = batch_from_ids(ids, mask).to(device)
        answer_start = torch.tensor([width - len(c) for c in conts])  # where each row's continuation begins
        with policy.scoring(batch.input_ids, answer_start):
            logits = policy.model(**batch.inputs(), use_cache=False, logits_to_keep=longest + 1).logits
        logp: Float[torch.Tensor, "batch cont vocab"] = torch.log_softmax(logits[:, :-1].float(), -1)
        targets = batch.input_ids[:, -longest:]
        token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu()
        out += [float(token_logp[i, longest - len(c):].sum()) for i, c in enumerate(conts)]
    return out


def evaluate_mc(policy: Policy, items: Sequence[MCItem], *, mode: Mode = "letter", batch_size: int = 16) -> dict:
    """Accuracy of argmax log-likelihood, with each item's scores and prediction."""
    if not items:
        raise SafeSteerError("no multiple-choice items to evaluate")
    prompts, conts, owner = [], [], []
    for i, item in enumerate(items):
        prompt, candidates = prompt_and_continuations(item, mode)
        prompts += [prompt] * len(candidates)
        conts += candidates
        owner += [i] * len(candidates)
    scores = continuation_logliks(policy, prompts, conts, batch_size)
    per_item: list[list[float]] = [[] for _ in items]
    for i, score in zip(owner, scores):
        per_item[i].append(score)
    predictions = [max(range(len(s)), key=s.__getitem__) for s in per_item]
    correct = [p == item.answer for p, item in zip(predictions, items)]
    return {"accuracy": sum(correct) / len(correct), "n": len(items), "mode": mode, "predictions": predictions,
            "logliks": per_item}


__all__ = ["MCItem", "continuation_logliks", "evaluate_mc", "load_items", "parse_items", "prompt_and_continuations"]
