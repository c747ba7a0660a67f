"""Capability items with checkable short answers and their judge.

An item asks for one short right answer ("What is 17 + 25?" -> 42, "Spell 'cat' backwards." -> tac). The judge
reads the opening of the model's answer: numbers match as numbers (the answer's first new number must equal the
expected one), words and short strings on word boundaries. Accuracy is the share judged correct, by category too.
GSM8K problems (`gsm8k-100`) let the model reason first: `gsm8k_correct` reads the answer's last number instead.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from safesteer_interp.core.judges import final_answer
from safesteer_interp.data.files import read_rows
from safesteer_interp.data.sources import load_source, lookup
from safesteer_interp.errors import SafeSteerError

OPENING_CHARS = 200  # the answer's claim: a short answer gives it up front; what follows is explanation or babble
# A number standing alone: not part of a word ("H2O"), of a decimal (the "2" of "4.2") or of a range ("5-3" -> 3).
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # "1,000" -> "1000"; a list "1,2,3" stays as it is


def _unify(text: str) -> str:
    """Quotes, minus signs, thousands separators and whitespace in one form; case kept."""
    for odd, plain in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2212", "-")):
        text = text.replace(odd, plain)
    return re.sub(r"\s+", " ", THOUSANDS.sub("", text)).strip()


def opening(answer: str) -> str:
    """The part of an answer the judge reads: its first OPENING_CHARS characters after the think block, unified."""
    return _unify(final_answer(answer))[:OPENING_CHARS]


def as_number(text: str) -> float | None:
    """The value of a string that is a number and nothing else ("42", "-5", "2.54", "1,000"), else None."""
    text = _unify(text).rstrip(".")
    return float(text) if NUMBER.fullmatch(text) else None


def _numbers(text: str) -> list[float]:
    return [float(match) for match in NUMBER.findall(_unify(text))]


def answered_number(answer: str, restated: Sequence[float] = ()) -> float | None:
    """The number an answer gives: the first number of its opening that is not a restated one.

    Only one number counts, so an answer listing many ("42, 43 or 44") cannot hit by chance. Numbers before the
    first "=" are the question restated ("17 + 25 = 42."), and so are `restated` numbers (the question's own:
    "There are 300 centimetres in 3 metres." gives 300, not 3).
    """
    text = opening(answer)
    if "=" in text:
        text = text.split("=", 1)[1]
    fresh = [n for n in _numbers(text) if not any(math.isclose(n, r) for r in restated)]
    return fresh[0] if fresh else None


def last_number(answer: str) -> float | None:
    """The last number of an answer after its think block, where a chain of thought ends on its result.

    "1,250.50" reads 1250.5, "-3" is negative, "$40" and "25%" are 40 and 25, and a sentence's full stop ("18.") is
    not a decimal point; None when the answer holds no number.
    """
    numbers = _numbers(final_answer(answer))
    return numbers[-1] if numbers else None


def gsm8k_correct(answer: str, target: str) -> bool:
    """Whether a GSM8K answer ends on the target: its last number equals `target` ("2280", "1,600") by value.

    Chain of thought is allowed, so earlier numbers (intermediate steps, the question restated) do not count; an
    answer cut off mid-reasoning is judged by wherever it stopped, and an answer with no number is wrong.
    """
    value = as_number(target)
    if value is None:
        raise SafeSteerError(f"GSM8K target {target!r} is not a number; the judge compares numbers")
    given = last_number(answer)
    return given is not None and math.isclose(given, value, rel_tol=1e-9, abs_tol=1e-9)


def _says(text: str, expected: str) -> bool:
    """Whether `text` contains `expected` on word boundaries; case-blind unless `expected` is written in capitals.

    Capitals matter for items such as "Reply with only the word blue in capital letters." -> BLUE.
    """
    target = _unify(expected).strip(" .,;:!?\"'")
    if not target:
        return False
    capitals = sum(c.isalpha() for c in target) >= 2 and target.isupper()
    flags = 0 if capitals else re.IGNORECASE
    return re.search(rf"(?<!\w){re.escape(target)}(?!\w)", text, flags) is not None


def is_correct(answer: str, expected: str, accept: Iterable[str] = (), *, instruction: str = "") -> bool:
    """Whether an answer gives the expected short answer (or one of its accepted spellings) in its opening.

    A numeric target ("42", "42.0", "-5") is compared by value with `answered_number`: "42" does not match "142",
    "4.2" or "17 + 25 = 41, not 42"; numbers in `instruction` (pass it when there is one) do not count as the
    answer. A word target ("Paris", "tac", "apple, mango, pear") must appear on word boundaries: "Paris." and "The
    capital of France is Paris" match, "Parisian" does not. Misses: a word answer inside a list ("Paris, Rome or
    Madrid" counts for Paris), hedged answers ("not Paris"), and the "only"-ness of instructions ("Reply with
    only ...": extra words are not penalised). Case is ignored except for targets in capitals (BLUE).
    """
    restated = _numbers(instruction)
    for target in (expected, *accept):
        value = as_number(target)
        if value is None:
            if _says(opening(answer), target):
                return True
            continue
        skip = [n for n in restated if not math.isclose(n, value)]  # the expected number itself is never a restatement
        given = answered_number(answer, skip)
        if given is not None and math.isclose(given, value, rel_tol=1e-9, abs_tol=1e-9):
            return True
    return False


def score_capability(records: Iterable[Mapping]) -> dict:
    """Accuracy overall and per category from records {category, answer, expected, accept[, instruction]}.

    Returns {"accuracy", "n", "by_category": {category: {"accuracy", "n"}}}; accuracy is 0.0 where n is 0.
    """
    hits: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        hit = is_correct(record["answer"], record["expected"], record.get("accept", ()),
                         instruction=record.get("instruction", ""))
        hits[record["category"]].append(hit)

    def summary(flags: list[bool]) -> dict:
        return {"accuracy": sum(flags) / len(flags) if flags else 0.0, "n": len(flags)}

    everything = [hit for flags in hits.values() for hit in flags]
    return {**summary(everything), "by_category": {cat: summary(flags) for cat, flags in sorted(hits.items())}}


def load_capability(source: str) -> list[dict]:
    """Items {prompt, instruction, expected, accept, category, id} of a short-answer set: a name (`capability-test`,
    `NAME=PATH`) or a .json/.jsonl/.csv file with `instruction` and `answer` (optional `accept` list, `category`)."""
    named = lookup(source)
    if named is not None:
        rows, where = load_source(*named, want="short_answer")
    else:
        rows, where = read_rows(source, "capability file"), f"capability file {source}"
    items = []
    for number, row in enumerate(rows, 1):
        empty = not isinstance(row, dict) or not str(row.get("instruction") or "").strip()
        if empty or row.get("answer") in (None, ""):
            raise SafeSteerError(f"{where} row {number} needs a non-empty 'instruction' and 'answer'")
        accept = row.get("accept") or []
        if not isinstance(accept, list):
            raise SafeSteerError(f"{where} row {number}: 'accept' must be a list of strings, got {accept!r}")
        instruction = str(row["instruction"]).strip()
        items.append({"id": row.get("id", number), "prompt": instruction, "instruction": instruction,
                      "expected": str(row["answer"]), "accept": [str(a) for a in accept],
                      "category": str(row.get("category") or "all")})
    return items


__all__ = ["OPENING_CHARS", "answered_number", "as_number", "gsm8k_correct", "is_correct", "last_number",
           "load_capability", "opening", "score_capability"]
