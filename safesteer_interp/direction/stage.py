"""Stage 1 of SafeSteer: find the refusal direction, pick one (pos, layer), and leave explainable artifacts.

Pipeline: sample harmful/harmless train+val instructions -> keep those the base model already refuses/answers
(by its own refusal score) -> difference in means of resid_pre at every post-instruction position and layer ->
score every candidate (ablation, addition, KL) -> select -> validate on held-out prompts by generation.
Everything lands in RUN/direction/: candidates, direction, scores, heatmaps, logit lens, metadata.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.artifacts import write_json, write_tensors
from safesteer_interp.core.chat import post_instruction_length, post_instruction_tokens
from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.hooks import Positions, ablate_direction, add_to_resid, n_layers
from safesteer_interp.core.scoring import next_token_logprobs
from safesteer_interp.direction.artifact import (
    TEACHER_POSITIONS,
    Direction,
    check_positions,
    direction_dir,
    save_direction,
)
from safesteer_interp.direction.candidates import difference_in_means
from safesteer_interp.direction.plots import heatmap, logit_lens
from safesteer_interp.direction.refusal_score import (
    derive_refusal_tokens,
    refusal_scores,
    refusal_tokens_from_strings,
)
from safesteer_interp.direction.select import SelectionConfig, kl_last_position, score_candidates, select
from safesteer_interp.errors import SafeSteerError

COEFF_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class InstructionSets:
    """Train/val instructions for direction finding, plus held-out sets for the validation block."""

    harmful_train: list[str]
    harmless_train: list[str]
    harmful_val: list[str]
    harmless_val: list[str]
    held_out: dict[str, list[str]] = field(default_factory=dict)  # e.g. harmless / gap / refused test prompts


@dataclass(frozen=True)
class DirectionConfig:
    n_train: int = 128
    n_val: int = 32
    seed: int = 42
    coeff: float | str = 1.0  # a number, or "auto" for the validation sweep over COEFF_GRID
    refusal_tokens: tuple[str, ...] = ()  # override; empty = derive from the model's own refusals
    selection: SelectionConfig = SelectionConfig()
    max_new_tokens: int = 24
    filter_prompts: bool = True  # the reference filters by refusal score; off only for diagnostics and tests
    positions: str = "all"  # where the teacher steers: "all" (reference), "prompt", "last", or "auto" (validation)


# ----------------------------------------------------------------------------------------------- steering API
def add_direction(model, direction: Direction | Tensor, layer: int | None = None, coeff: float | None = None,
                  positions: Positions | str = "all", tokenizer=None) -> AbstractContextManager:
    """Activation addition of a direction: "all" positions (the reference), "prompt", "post-instruction", "last"
    or k (the last k prompt tokens)."""
    vector = direction.vector if isinstance(direction, Direction) else direction
    layer = direction.layer if layer is None and isinstance(direction, Direction) else layer
    coeff = (direction.coeff if isinstance(direction, Direction) else 1.0) if coeff is None else coeff
    if layer is None:
        raise SafeSteerError("add_direction needs a layer (or a Direction that carries one)")
    if positions == "post-instruction":
        if tokenizer is None:
            raise SafeSteerError("positions='post-instruction' needs the tokenizer to find the template tokens")
        positions = post_instruction_length(tokenizer)
    return add_to_resid(model, vector, layer, coeff, positions)


def ablate(model, direction: Direction | Tensor) -> AbstractContextManager:
    """Directional ablation of a direction at every layer and position."""
    return ablate_direction(model, direction.vector if isinstance(direction, Direction) else direction)


# ----------------------------------------------------------------------------------------------- data
def sample(items: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """Up to n items, seeded, independent of input order (sorted first: never iterate a set to sample)."""
    pool = sorted(set(items))
    return rng.sample(pool, min(n, len(pool)))


def organism_sets(n_train: int = 128, n_val: int = 32, seed: int = 42) -> InstructionSets:
    """The organism's own splits: refused-category harm vs harmless requests; held-out = test split."""
    from safesteer_interp.organism import world

    rng = random.Random(seed)
    test = {g: world.prompts(g, "test") for g in ("harmless", "gap", "refused")}
    return InstructionSets(sample(world.prompts("refused", "train"), n_train, rng),
                           sample(world.prompts("harmless", "train"), n_train, rng),
                           sample(world.prompts("refused", "val"), n_val, rng),
                           sample(world.prompts("harmless", "val"), n_val, rng),
                           held_out={g: sample(p, 64, random.Random(seed + 1)) for g, p in test.items()})


def split_sets(harmful: Sequence[str], harmless: Sequence[str], n_train: int, n_val: int, seed: int) -> InstructionSets:
    """Train/val from two instruction lists (real models): disjoint seeded draws."""
    for name, items in (("harmful", harmful), ("harmless", harmless)):
        if len(items) < 2:
            raise SafeSteerError(f"the {name} instruction set has {len(items)} prompts; need at least 2")
    rng = random.Random(seed)
    a, b = sample(harmful, n_train + n_val, rng), sample(harmless, n_train + n_val, rng)
    cut_a, cut_b = max(1, len(a) * n_train // (n_train + n_val)), max(1, len(b) * n_train // (n_train + n_val))
    return InstructionSets(a[:cut_a], b[:cut_b], a[cut_a:], b[cut_b:],
                           held_out={"harmful": a[cut_a:], "harmless": b[cut_b:]})


# ----------------------------------------------------------------------------------------------- stages
def filter_sets(model, tokenizer, sets: InstructionSets, ids: Sequence[int]) -> tuple[InstructionSets, dict]:
    """Keep harmful prompts the model leans to refuse (score > 0) and harmless ones it leans to answer (< 0)."""
    kept, counts = {}, {}
    for name, sign in (("harmful_train", 1), ("harmless_train", -1), ("harmful_val", 1), ("harmless_val", -1)):
        prompts = getattr(sets, name)
        scores = refusal_scores(model, tokenizer, prompts, ids)
        kept[name] = [p for p, s in zip(prompts, scores.tolist(), strict=True) if sign * s > 0]
        counts[name] = {"before": len(prompts), "after": len(kept[name])}
        if not kept[name]:
            raise SafeSteerError(f"filtering by refusal score left no {name} prompts ({len(prompts)} before); the "
                                 "model does not separate harmful from harmless here — check the prompt sets or "
                                 "--refusal-tokens")
    return InstructionSets(**kept, held_out=sets.held_out), counts


def refusal_rate(model, tokenizer, prompts: Sequence[str], judge, max_new_tokens: int) -> float:
    """Share of greedy answers the judge marks as refusals."""
    return judge.refusal_rate(generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens))


def coefficient_sweep(model, tokenizer, direction: Direction, harmless_val: Sequence[str], judge,
                      max_new_tokens: int) -> list[dict]:
    """Refusal induced on harmless val, and its KL cost, per coefficient (at the direction's positions)."""
    base = next_token_logprobs(model, tokenizer, harmless_val)
    rows = []
    for coeff in COEFF_GRID:
        with add_to_resid(model, direction.vector, direction.layer, coeff, positions=direction.positions):
            rate = refusal_rate(model, tokenizer, harmless_val, judge, max_new_tokens)
            kl = kl_last_position(base, next_token_logprobs(model, tokenizer, harmless_val)).mean()
        rows.append({"coeff": coeff, "refusal_rate_harmless_val": round(rate, 4),
                     "kl_harmless_val": round(float(kl), 4)})
    return rows


def judged_rates(answers: Sequence[str], judge, coherent: Callable[[str], bool] | None) -> dict[str, float]:
    """Refusal rate by the judge and, with a `coherent` judge, the share that are real refusal wordings."""
    rates = {"refusal": round(judge.refusal_rate(answers), 4)}
    if coherent is not None:
        rates["coherent"] = round(sum(map(coherent, answers)) / len(answers), 4)
    return rates


def positions_check(model, tokenizer, direction: Direction, harmless_val: Sequence[str], judge, max_new_tokens: int,
                    coherent: Callable[[str], bool] | None = None) -> dict:
    """Refusal induced on harmless *validation* prompts by steering at each of the teacher positions (every token,
    every prompt token, the last prompt token).

    Adding the vector to every token (the reference) can flip the decision and then drown the answer tokens: a
    refusal opener repeated ("I'm I'm I'm") passes a substring judge. `coherent` (the organism's wordings) tells
    the two apart; without it the substring judge decides.
    """
    out = {}
    for positions in TEACHER_POSITIONS:
        with add_to_resid(model, direction.vector, direction.layer, direction.coeff, positions=positions):
            answers = generate_answers(model, tokenizer, list(harmless_val), max_new_tokens=max_new_tokens)
        rates = judged_rates(answers, judge, coherent)
        out[positions] = {**{f"{k}_rate_harmless_val": v for k, v in rates.items()}, "example": answers[0]}
    return out


def pick_positions(check: dict) -> str:
    """The positions whose steered answers refuse best on validation (coherent rate if judged); a tie goes to the
    broader positions (all > prompt > last), the closest to the reference's intervention."""
    key = "coherent_rate_harmless_val" if "coherent_rate_harmless_val" in check["all"] else "refusal_rate_harmless_val"
    return max((p for p in TEACHER_POSITIONS if p in check), key=lambda p: (check[p][key], -TEACHER_POSITIONS.index(p)))


def pick_coeff(sweep: list[dict], target: float = 0.9) -> float:
    """The smallest coefficient that makes >= target of harmless val prompts refuse (else the strongest)."""
    for row in sweep:
        if row["refusal_rate_harmless_val"] >= target:
            return row["coeff"]
    return max(sweep, key=lambda r: r["refusal_rate_harmless_val"])["coeff"]


def validate(model, tokenizer, direction: Direction, held_out: dict[str, list[str]], judge, max_new_tokens: int,
             coherent: Callable[[str], bool] | None = None) -> dict:
    """Held-out behaviour of the chosen direction, judged on greedy generations.

    `coherent` (optional) is a stricter judge: the answer *is* one of the model's refusal wordings, not babble that
    happens to contain a refusal phrase. Its rates are reported as `*_coherent`.
    """
    out: dict = {}

    def record(key: str, prompts: list[str]) -> None:
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        rates = judged_rates(answers, judge, coherent)
        out[key] = rates["refusal"]
        if "coherent" in rates:
            out[f"{key}_coherent"] = rates["coherent"]
        out.setdefault("samples", {})[key] = [{"prompt": p, "answer": a} for p, a in zip(prompts[:3], answers[:3])]

    with add_to_resid(model, direction.vector, direction.layer, direction.coeff, positions=direction.positions):
        for group in ("harmless", "gap", "harmful"):
            if held_out.get(group):
                record(f"steer_refusal_{group}", held_out[group])
    for group in ("refused", "harmful"):
        if held_out.get(group):
            record(f"base_refusal_{group}", held_out[group])
            with ablate_direction(model, direction.vector):
                record(f"ablate_refusal_{group}", held_out[group])
    if held_out.get("harmless"):
        base = next_token_logprobs(model, tokenizer, held_out["harmless"])
        with ablate_direction(model, direction.vector):
            ablated = next_token_logprobs(model, tokenizer, held_out["harmless"])
        out["kl_harmless"] = round(float(kl_last_position(base, ablated).mean()), 5)
    out["n_prompts"] = {g: len(p) for g, p in held_out.items()}
    return out


def find_direction(model, tokenizer, sets: InstructionSets, out: str | Path, config: DirectionConfig, judge, *,
                   model_name: str, progress: Callable[[int], Callable[[], None]] | None = None,
                   coherent: Callable[[str], bool] | None = None) -> dict:
    """Run stage 1 end to end and write RUN/direction/. Returns metadata.json's content."""
    check_positions(config.positions, auto=True)  # before any model work
    start, folder = time.perf_counter(), direction_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    refusal = (refusal_tokens_from_strings(tokenizer, config.refusal_tokens) if config.refusal_tokens
               else derive_refusal_tokens(model, tokenizer, sets.harmful_train, judge))
    if config.filter_prompts:
        filtered, counts = filter_sets(model, tokenizer, sets, refusal.ids)
    else:
        filtered = sets
        counts = {k: {"before": len(getattr(sets, k)), "after": len(getattr(sets, k))}
                  for k in ("harmful_train", "harmless_train", "harmful_val", "harmless_val")}
    k = post_instruction_length(tokenizer)
    candidates = difference_in_means(model, tokenizer, filtered.harmful_train, filtered.harmless_train, k)
    write_tensors(folder / "candidates.safetensors", {"candidates": candidates},
                  {"axes": "pos layer d_model", "hook": "resid_pre", "pos": f"last {k} prompt tokens"})
    tick = progress(k * n_layers(model)) if progress else (lambda: None)
    scores = score_candidates(model, tokenizer, candidates, filtered.harmful_val, filtered.harmless_val,
                              refusal.ids, config.selection, tick)
    pos_labels = post_instruction_tokens(tokenizer)
    write_scores(folder, scores, pos_labels)
    try:
        p, layer, report = select(scores, n_layers(model), config.selection)
    except SafeSteerError as err:
        write_json(folder / "selection_report.json", getattr(err, "report", {"error": str(err)}))
        raise
    write_json(folder / "selection_report.json", report)
    start_coeff = float(config.coeff) if isinstance(config.coeff, int | float) else 1.0
    direction = Direction(candidates[p, layer].float(), layer, p - k, start_coeff,
                          "all" if config.positions == "auto" else config.positions)
    check = None
    if config.positions == "auto":  # chosen on validation prompts, before any held-out number is looked at
        check = positions_check(model, tokenizer, direction, filtered.harmless_val, judge, config.max_new_tokens,
                                coherent)
        direction = replace(direction, positions=pick_positions(check))
    sweep = None
    if config.coeff == "auto":
        sweep = coefficient_sweep(model, tokenizer, direction, filtered.harmless_val, judge, config.max_new_tokens)
        direction = replace(direction, coeff=pick_coeff(sweep))
    save_direction(out, direction)
    for kind in ("ablation", "steering", "kl"):
        base = {"ablation": scores["baseline_harmful"], "steering": scores["baseline_harmless"]}.get(kind)
        heatmap(scores[kind], kind, pos_labels, folder / f"{kind}_scores.png", (p, layer),
                None if base is None else float(base))
    write_json(folder / "logit_lens.json", logit_lens(model, tokenizer, direction.vector))
    write_json(folder / "prompts.json", asdict(filtered))
    metadata = {
        "model": model_name, "layer": layer, "pos": direction.pos, "pos_token": pos_labels[p],
        "coeff": direction.coeff, "positions": direction.positions, "positions_requested": config.positions,
        "positions_check": check, "hook": f"blocks.{layer}.hook_resid_pre",
        "norm": round(float(direction.vector.norm()), 4),
        "candidate_norms": [[round(float(x), 3) for x in row] for row in candidates.norm(dim=-1)],
        "refusal_tokens": asdict(refusal), "filter_counts": counts, "selection": report,
        "coefficient_sweep": sweep, "seed": config.seed, "n_train": config.n_train, "n_val": config.n_val,
        "validation": validate(model, tokenizer, direction, sets.held_out, judge, config.max_new_tokens, coherent),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(folder / "metadata.json", metadata)
    return metadata


def write_scores(folder: Path, scores: dict[str, Tensor], pos_labels: Sequence[str]) -> None:
    """scores.json: every candidate's three scores, as [pos][layer] lists, with axis labels."""
    write_json(folder / "scores.json", {
        "axes": ["pos", "layer"], "pos_tokens": list(pos_labels),
        "pos_index": [-len(pos_labels) + i for i in range(len(pos_labels))],
        "ablation_refusal_harmful_val": _grid(scores["ablation"]),
        "steering_refusal_harmless_val": _grid(scores["steering"]),
        "kl_harmless_val": _grid(scores["kl"]),
        "baseline_refusal_harmful_val": round(float(scores["baseline_harmful"]), 4),
        "baseline_refusal_harmless_val": round(float(scores["baseline_harmless"]), 4)})


def _grid(t: Float[Tensor, "pos layer"]) -> list[list[float | None]]:
    return [[None if torch.isnan(x) else round(float(x), 5) for x in row] for row in t]
