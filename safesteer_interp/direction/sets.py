"""The instructions stage 1 works on: harmful and harmless train / val sets, plus held-out sets for the validation.

Sets come from the organism's own splits or from two instruction lists (real models), by seeded draws that do not
depend on input order. `filter_sets` then keeps, as the reference does, only the harmful prompts the base model
already leans to refuse and the harmless ones it leans to answer (by its own refusal score); `judged_filter` does the
same by what its greedy answers do (the aligned path).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from safesteer_interp.core.generation import GreedyAnswers
from safesteer_interp.core.judges import starts_with_wording
from safesteer_interp.core.models import is_organism
from safesteer_interp.data.prompts import load_instructions
from safesteer_interp.direction.refusal_score import refusal_scores
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.organism import world

SPLITS = ("harmful_train", "harmless_train", "harmful_val", "harmless_val")


@dataclass(frozen=True)
class InstructionSets:
    """Train/val instructions for direction finding, plus held-out sets for the validation block."""

    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]
    held_out: dict[str, list[str]] = field(default_factory=dict)  # e.g. harmless / gap / refused test prompts


def draw(items: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """Up to n distinct items, seeded, independent of input order (sorted first: never iterate a set to sample).
    Unlike `data.prompts.sample`, the result is in draw order, not file order."""
    pool = sorted(set(items))
    return rng.sample(pool, min(n, len(pool)))


# Words that open a question. HarmBench's behaviours are tasks ("Write ...", "Give detailed instructions ..."), most
# benign requests are questions ("How do I ...?"): a difference in means across the two is mostly the difference
# in form, and adding it makes a model write titled essays ("<<The Art of ...>>"), not refuse.
QUESTION_WORDS = frozenset({"how", "what", "why", "who", "when", "where", "which", "is", "are", "can", "could", "do",
                            "does", "should", "would", "will"})


def same_form(harmless: Sequence[str], harmful: Sequence[str]) -> list[str]:
    """The harmless instructions in the harmful ones' majority form: tasks when most harmful ones are tasks (the
    latent path's contrast on HarmBench), else all of them."""
    def is_question(text: str) -> bool:
        words = text.strip().split()
        return bool(words) and (words[0].lower().strip("\"'") in QUESTION_WORDS or text.rstrip().endswith("?"))
    if sum(map(is_question, harmful)) * 2 >= len(harmful):
        return list(harmless)
    return [h for h in harmless if not is_question(h)]


def organism_sets(n_train: int = 128, n_val: int = 32, seed: int = 42) -> InstructionSets:
    """The organism's own splits: refused-category harm vs harmless requests; held-out = test split."""
    rng = random.Random(seed)
    test = {g: world.prompts(g, "test") for g in ("harmless", "gap", "refused")}
    return InstructionSets(draw(world.prompts("refused", "train"), n_train, rng),
                           draw(world.prompts("harmless", "train"), n_train, rng),
                           draw(world.prompts("refused", "val"), n_val, rng),
                           draw(world.prompts("harmless", "val"), n_val, rng),
                           held_out={g: draw(p, 64, random.Random(seed + 1)) for g, p in test.items()})


def split_sets(harmful: Sequence[str], harmless: Sequence[str], n_train: int, n_val: int, seed: int) -> InstructionSets:
    """Train/val from two instruction lists (real models): disjoint seeded draws."""
    for name, items in (("harmful", harmful), ("harmless", harmless)):
        if len(items) < 2:
            raise SafeSteerError(f"the {name} instruction set has {len(items)} prompts; need at least 2")
    rng = random.Random(seed)
    a, b = draw(harmful, n_train + n_val, rng), draw(harmless, n_train + n_val, rng)
    cut_a, cut_b = max(1, len(a) * n_train // (n_train + n_val)), max(1, len(b) * n_train // (n_train + n_val))
    return InstructionSets(a[:cut_a], b[:cut_b], a[cut_a:], b[cut_b:],
                           held_out={"harmful": a[cut_a:], "harmless": b[cut_b:]})


def instruction_sets(model_spec: str, n_train: int, n_val: int, seed: int, harmful: str | None = None,
                     harmless: str | None = None) -> tuple[InstructionSets, Callable[[str], bool] | None]:
    """The sets for a model, and the stricter `coherent` judge when the model has known refusal wordings.

    The organism uses its own splits and wordings unless both instruction sources are given; any other model needs
    both (a file or dataset with an `instruction` column).
    """
    if harmful is None and harmless is None and is_organism(model_spec):
        return organism_sets(n_train, n_val, seed), starts_with_wording
    if harmful is None or harmless is None:
        raise SafeSteerError("pass both --harmful and --harmless (a file or dataset with an `instruction` column) "
                             "for a model other than the organism")
    return split_sets(load_instructions(harmful), load_instructions(harmless), n_train, n_val, seed), None


MIN_KEPT = 0.25  # the latent path takes over when the filter keeps less than this share of a harmful split


def filter_sets(model, tokenizer, sets: InstructionSets, ids: Sequence[int],
                min_kept: float = 0.0) -> tuple[InstructionSets, dict]:
    """Keep harmful prompts the model leans to refuse (score > 0) and harmless ones it leans to answer (< 0).

    min_kept > 0 (the latent path, for a model whose refusal is latent: it refuses almost nothing yet): a harmful
    split of which the filter would keep less than this share stays whole, and counts[split]["skipped"] says so.
    """
    kept, counts = {}, {}
    for name, sign in zip(SPLITS, (1, -1, 1, -1), strict=True):
        prompts = getattr(sets, name)
        scores = refusal_scores(model, tokenizer, prompts, ids)
        kept[name] = [p for p, s in zip(prompts, scores.tolist(), strict=True) if sign * s > 0]
        counts[name] = {"before": len(prompts), "after": len(kept[name])}
        if sign > 0 and len(kept[name]) < min_kept * len(prompts):
            counts[name].update(after=len(prompts), skipped=True, would_keep=len(kept[name]))
            kept[name] = list(prompts)
        if not kept[name]:
            raise SafeSteerError(f"filtering by refusal score left no {name} prompts ({len(prompts)} before); the "
                                 "model does not separate harmful from harmless here — check the prompt sets or "
                                 "--refusal-tokens, or pass --refusal-path latent for a model that does not refuse")
    return InstructionSets(**kept, held_out=sets.held_out), counts


def judged_filter(model, tokenizer, sets: InstructionSets, refuses: Callable[[str], bool],
                  max_new_tokens: int = 24, answers: GreedyAnswers | None = None) -> tuple[InstructionSets, dict]:
    """The aligned path's filter: keep the harmful prompts whose greedy answer the judge calls a refusal and the
    harmless ones it answers, by what the model does rather than by the refusal log-odds' sign. The harmful val
    prompts it answers become `held_out["gap"]`: what the teacher must learn to refuse (coefficient and positions).
    `answers`: the stage's memo of the unedited model's greedy answers (else generated here)."""
    answers = answers or GreedyAnswers(model, tokenizer, max_new_tokens)
    kept, counts = {}, {}
    for name, want_refusal in zip(SPLITS, (True, False, True, False), strict=True):
        prompts = getattr(sets, name)
        verdicts = list(map(refuses, answers(prompts)))
        kept[name] = [p for p, refused in zip(prompts, verdicts, strict=True) if refused == want_refusal]
        counts[name] = {"before": len(prompts), "after": len(kept[name]), "judged_refusals": sum(verdicts)}
    refused_val = set(kept["harmful_val"])
    gap = [p for p in sets.harmful_val if p not in refused_val]
    held_out = {**sets.held_out, **({"gap": gap} if gap else {})}
    return InstructionSets(**kept, held_out=held_out), counts


def unfiltered(sets: InstructionSets) -> tuple[InstructionSets, dict]:
    """`filter_sets`' result with filtering off (diagnostics and tests): every prompt kept."""
    return sets, {k: {"before": len(getattr(sets, k)), "after": len(getattr(sets, k))} for k in SPLITS}
