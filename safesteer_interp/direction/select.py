"""Choosing one refusal direction among the [pos, layer] candidates (the refusal_direction / SafeSteer recipe).

Each candidate r[p, l] gets three scores on validation prompts: the refusal score of harmful prompts with unit(r)
ablated at every layer (lower = ablation removes refusal), the refusal score of harmless prompts with +coeff*r added
at layer l (higher = addition induces refusal), and the last-position KL(base || ablated) on harmless prompts
(lower = ablation leaves harmless behaviour alone). Filters drop late layers, high KL and non-inducing candidates;
the lowest ablation score wins (`rank_by="steering"`, the latent path: the highest steering score, since a model that
refuses nothing has no refusal for ablation to remove). When nothing survives, a report says which filter removed what.
Scoring can be lazy and still exact. Ranked by steering: steering for every unpruned candidate, then ablation and KL
only in descending steering order until a few candidates pass every filter (the first of them is the winner). Ranked
by ablation (the aligned path): ablation for every unpruned candidate, then steering and KL in ascending ablation order
(KL only where the steering score passes: a candidate out by one filter needs no second score).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.hooks import ablate_direction, add_to_resid
from safesteer_interp.core.scoring import next_token_logprobs
from safesteer_interp.direction.refusal_score import log_odds
from safesteer_interp.errors import SafeSteerError


@dataclass(frozen=True)
class CandidateConfig:
    """How the [pos, layer] candidates are scored and which of them survive to be selected."""

    prune: float = 0.2  # drop layers l >= int(L * (1 - prune))
    kl_max: float = 0.1  # drop candidates whose ablation moves harmless next-token distributions more than this
    induce_min: float = 0.0  # drop candidates whose addition leaves the mean harmless refusal score below this
    coeff: float = 1.0  # addition coefficient used for the steering score
    batch_size: int = 32
    rank_by: str = "ablation"  # "ablation" (reference: lowest wins) or "steering" (latent path: highest wins)
    # Score lazily, in ranking order, until this many candidates pass every filter (0: score the whole grid). The
    # winner is the same; unscored cells stay NaN ("not_scored").
    lazy_survivors: int = 0
    # The aligned path: a steering score must reach halfway from the unsteered harmless score to the model's own
    # score on the harmful val prompts it refuses, not the reference's fixed 0. A model that refuses with confidence
    # scores its refusals far above 0 and harmless prompts far below, so 0 lies between them; one that refuses with
    # "I" at p < 0.5 (Qwen2.5-Coder-0.5B-Instruct) scores both below 0, and no candidate reaches it (docs/qwen.md).
    induce_calibrated: bool = False


ZERO_NORM = 1e-8


class NothingSurvived(SafeSteerError):
    """Every candidate was filtered out; `report` says by which filter."""

    def __init__(self, report: dict):
        self.report = report
        counts = ", ".join(f"{k}: {v}" for k, v in report["removed_by"].items())
        super().__init__(f"no refusal-direction candidate survived the filters ({counts}); see the report for "
                         "score ranges, and relax --kl-max / --prune or check the harmful/harmless prompts")


def kl_last_position(base: Float[Tensor, "batch vocab"],
                     other: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
    """KL(base || other) of next-token distributions given as log-probs, with the reference's 1e-6 inside logs."""
    p, q = base.exp(), other.exp()
    return (p * (torch.log(p + 1e-6) - torch.log(q + 1e-6))).sum(-1)


SteerScore = Callable[[Tensor | None, int], float]  # (vector or None for unsteered, layer) -> steering score


def score_candidates(model, tokenizer, candidates: Float[Tensor, "pos layer d_model"], harmful_val: Sequence[str],
                     harmless_val: Sequence[str], refusal_ids: Sequence[int], config: CandidateConfig,
                     progress: Callable[[], None] = lambda: None,
                     steer_score: SteerScore | None = None) -> dict[str, Float[Tensor, "pos layer"]]:
    """The three scores of every candidate (lazily: see the module docstring), plus the unsteered baselines.

    `steer_score` replaces the steering score (the reference: the mean harmless refusal log-odds with +coeff*r
    added); the latent path passes the share of coherent refusals among steered greedy answers."""
    n_pos, n_layer, _ = candidates.shape
    lp = lambda prompts: next_token_logprobs(model, tokenizer, prompts, batch_size=config.batch_size)  # noqa: E731
    base_harmless = lp(harmless_val)
    scores = {k: torch.full((n_pos, n_layer), math.nan, dtype=torch.float64) for k in ("ablation", "steering", "kl")}
    scores["norm"] = candidates.norm(dim=-1)
    scores["baseline_harmful"] = log_odds(lp(harmful_val).exp(), refusal_ids).mean()
    scores["baseline_harmless"] = log_odds(base_harmless.exp(), refusal_ids).mean()
    if steer_score is not None:
        scores["baseline_harmless"] = torch.tensor(steer_score(None, 0), dtype=torch.float64)

    def ablation(p: int, layer: int) -> None:
        with ablate_direction(model, candidates[p, layer].float()):
            scores["ablation"][p, layer] = log_odds(lp(harmful_val).exp(), refusal_ids).mean()

    def kl(p: int, layer: int) -> None:
        with ablate_direction(model, candidates[p, layer].float()):
            scores["kl"][p, layer] = kl_last_position(base_harmless, lp(harmless_val)).mean()

    def steering(p: int, layer: int) -> None:
        if steer_score is not None:
            scores["steering"][p, layer] = steer_score(candidates[p, layer].float(), layer)
        else:
            with add_to_resid(model, candidates[p, layer].float(), layer, config.coeff, positions="all"):
                scores["steering"][p, layer] = log_odds(lp(harmless_val).exp(), refusal_ids).mean()

    lazy = config.lazy_survivors > 0
    first, rest = ((steering,), (ablation, kl)) if config.rank_by == "steering" else ((ablation,), (steering, kl))
    cells = [(p, layer) for p in range(n_pos) for layer in range(n_layer)
             if scores["norm"][p, layer] > ZERO_NORM  # e.g. layer 0 of a fixed template token: embeddings only
             and not (lazy and layer >= pruned_from(n_layer, config))]
    for p, layer in cells:
        for score in first if lazy else (*first, *rest):
            score(p, layer)
        progress()
    for _ in range(n_pos * n_layer - len(cells)):  # zero-norm and (lazy) pruned cells, so the bar ends full
        progress()
    if lazy:
        lazy_rest(scores, cells, rest, config)
    return scores


def lazy_rest(scores: dict[str, Tensor], cells: list[tuple[int, int]], rest: Sequence[Callable[[int, int], None]],
              config: CandidateConfig) -> None:
    """The other two scores, in ranking order (stable: ties keep grid order), until `lazy_survivors` candidates pass
    every filter: the first of them is the whole grid's winner."""
    by_steering, floor = config.rank_by == "steering", induce_floor(config, scores)
    order = sorted(cells, key=lambda c: -float(scores["steering"][c]) if by_steering else float(scores["ablation"][c]))
    def out(cell: tuple[int, int]) -> bool:
        """A filter of `select_candidate` already fails: KL above kl_max, or (ranked by ablation) steering below the
        floor. A score not computed yet (NaN) fails neither, so a candidate out by one score needs no next one."""
        return bool(scores["kl"][cell] > config.kl_max or (not by_steering and scores["steering"][cell] < floor))

    found = 0
    for cell in order:
        if by_steering and scores["steering"][cell] <= floor:
            break  # every later candidate fails the same filter
        for score in rest:
            score(*cell)
            if out(cell):
                break
        else:
            found += 1
            if found == config.lazy_survivors:
                break


def pruned_from(n_layers: int, config: CandidateConfig) -> int:
    """The first layer the prune filter drops (the reference: the last 20 % of layers)."""
    return int(n_layers * (1 - config.prune))


def induce_floor(config: CandidateConfig, scores: dict[str, Tensor]) -> float:
    """The steering score a candidate needs: induce_min; on the aligned path (`induce_calibrated`) the midpoint of the
    unsteered harmless score and the model's own score on the harmful prompts it refuses; on the latent path (rank
    by steering) no more than the unsteered harmless score (an unaligned model's log-odds start far below the
    reference's threshold of 0)."""
    if config.induce_calibrated:
        return 0.5 * (float(scores["baseline_harmless"]) + float(scores["baseline_harmful"]))
    if config.rank_by != "steering":
        return config.induce_min
    return min(config.induce_min, float(scores["baseline_harmless"]))


def select_candidate(scores: dict[str, Tensor], n_layers: int, config: CandidateConfig) -> tuple[int, int, dict]:
    """(pos index, layer, report). Raises NothingSurvived with the report when every candidate is filtered."""
    ablation, steering, kl = scores["ablation"], scores["steering"], scores["kl"]
    n_pos, n_layer = ablation.shape
    layer_idx = torch.arange(n_layer).expand(n_pos, n_layer)
    norm = scores.get("norm", torch.ones_like(ablation))
    floor = induce_floor(config, scores)
    # applied in this order; each candidate is counted by the first filter that removes it
    filters = {"zero_norm": norm <= ZERO_NORM, "pruned_layer": layer_idx >= pruned_from(n_layers, config)}
    if config.rank_by == "steering":  # lazy scoring stops at the floor: below it, ablation and KL were never scored
        filters["does_not_induce_refusal"] = steering <= floor  # must raise refusal above the unsteered model
        filters["not_scored"] = ~torch.isnan(steering) & (torch.isnan(ablation) | torch.isnan(kl))
    elif config.lazy_survivors:  # lazy by ablation: one out by steering has no KL; past the survivors, neither
        filters["does_not_induce_refusal"] = steering < floor
        filters["not_scored"] = ~torch.isnan(ablation) & (torch.isnan(steering) | torch.isnan(kl))
    filters["nan"] = torch.isnan(ablation) | torch.isnan(steering) | torch.isnan(kl)
    filters["kl_above_max"] = kl > config.kl_max
    filters.setdefault("does_not_induce_refusal", steering < floor)
    alive = torch.ones(n_pos, n_layer, dtype=torch.bool)
    removed = {}
    for name, mask in filters.items():
        removed[name] = int((alive & mask).sum())
        alive &= ~mask
    ranges = {k: [round(float(v.nan_to_num(0).min()), 4), round(float(v.nan_to_num(0).max()), 4)]
              for k, v in (("ablation", ablation), ("steering", steering), ("kl", kl))}  # NaN (not scored) as 0
    report = {"candidates": n_pos * n_layer, "survivors": int(alive.sum()), "removed_by": removed,
              "score_ranges": ranges, "induce_floor": round(floor, 4), "config": config.__dict__}
    if not alive.any():
        raise NothingSurvived(report)
    if config.rank_by == "steering":
        flat = int(torch.where(alive, steering, torch.full_like(steering, -math.inf)).argmax())
    else:
        flat = int(torch.where(alive, ablation, torch.full_like(ablation, math.inf)).argmin())
    return flat // n_layer, flat % n_layer, report
