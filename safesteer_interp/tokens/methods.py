"""Comparing the ways of electing S on one set of contrast records, so the choice can be made on validation prompts.

For each method (the reference's vote and mean, our mass ranking, the automatic size) it measures what S can give the
distillation loss: its share of the teacher-vs-base contrast (the Δ-weighted teacher mass) at answer positions 1-3,
whether the teacher's refusal openers are in it, its first-token probability under teacher and base, and its
stability (Jaccard between disjoint halves of the prompts and between two sampling seeds).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from safesteer_interp.tokens.contrast import ContrastRecords
from safesteer_interp.tokens.explain import jaccard
from safesteer_interp.tokens.vote import TokenStats, VoteConfig, rank_tokens, valid_chunks

# (label, method, K): the reference's two rankings at its K, then mass at three sizes and the automatic size
SETTINGS: tuple[tuple[str, str, int | str], ...] = (
    ("vote@50", "vote", 50), ("mean@50", "mean", 50), ("mass@5", "mass", 5), ("mass@20", "mass", 20),
    ("mass@50", "mass", 50), ("auto", "mass", "auto"))
OPENERS_PER_POSITION = 2  # the teacher's refusal openers: the tokens it raises most at each answer position


def by_position(records: ContrastRecords, banned: Bool[Tensor, " vocab"],
                chunk: int = 64) -> dict[str, Float[Tensor, "horizon vocab"]]:
    """Mean teacher and base probabilities and the normalised Δ-weighted teacher mass at each answer position."""
    H, V = records.horizon, records.vocab
    sums = {k: torch.zeros(H, V) for k in ("p_steered", "p_base", "mass")}
    count = torch.zeros(H)
    for lp_s, lp_b, h in valid_chunks(records, chunk):
        p_s = lp_s.exp()
        sums["p_steered"].index_add_(0, h, p_s)
        sums["p_base"].index_add_(0, h, lp_b.exp())
        sums["mass"].index_add_(0, h, p_s * (lp_s - lp_b).clamp(min=0))
        count += torch.bincount(h, minlength=H)
    mass = sums["mass"].masked_fill(banned, 0.0)
    return {"p_steered": sums["p_steered"] / count.clamp(min=1)[:, None],
            "p_base": sums["p_base"] / count.clamp(min=1)[:, None],
            "mass": mass / mass.sum(-1, keepdim=True).clamp(min=1e-30), "count": count}


def teacher_openers(per_position: dict[str, Tensor], banned: Bool[Tensor, " vocab"], positions: int) -> list[int]:
    """The tokens the teacher raises most (mean p_teacher - p_base) at each of the first `positions` answer positions:
    on a steered chat model, the words its refusals open with ("I", "'m", " sorry")."""
    gain = (per_position["p_steered"] - per_position["p_base"]).masked_fill(banned, -1.0)
    ids = [int(i) for h in range(min(positions, gain.shape[0])) for i in gain[h].topk(OPENERS_PER_POSITION).indices]
    return list(dict.fromkeys(ids))


def compare_methods(records: ContrastRecords, stats: TokenStats, others: dict[str, TokenStats], config: VoteConfig,
                    tokenizer, positions: int = 3) -> dict:
    """One row per setting of `SETTINGS`, plus the openers it looks for (tokens as decoded strings). `stats` are the
    records' statistics (`vote.stats_for`), `others` their halves and second seed (`vote.resamples`)."""
    per_position = by_position(records, stats.banned)
    horizon = range(min(positions, records.horizon))
    openers = teacher_openers(per_position, stats.banned, positions)
    name = lambda i: tokenizer.decode([i])  # noqa: E731
    rows = {}
    for label, method, k in SETTINGS:
        ids = rank_tokens(stats, k, method, config.share).ids
        ranked = {key: rank_tokens(s, k, method, config.share).ids for key, s in others.items()}
        rows[label] = {
            "method": method, "k": k, "size": len(ids), "tokens": [name(i) for i in ids[:20]],
            "contrast_share": round(float(stats.mass[ids].sum()), 4),
            "contrast_share_by_position": [round(float(per_position["mass"][h, ids].sum()), 4) for h in horizon],
            "p_teacher_first": round(float(per_position["p_steered"][0, ids].sum()), 4),
            "p_base_first": round(float(per_position["p_base"][0, ids].sum()), 4),
            "openers_in_s": [name(i) for i in openers if i in set(ids)],
            "jaccard_halves": round(jaccard(ranked["half_a"], ranked["half_b"]), 4) if "half_a" in ranked else None,
            "jaccard_seeds": round(jaccard(ids, ranked["seed_b"]), 4) if "seed_b" in ranked else None}
    return {"positions": [h + 1 for h in horizon], "n_valid_by_position": per_position["count"].tolist(),
            "openers": [{"token": name(i), **{key: [round(float(per_position[name_][h, i]), 4) for h in horizon]
                                              for key, name_ in (("p_teacher", "p_steered"), ("p_base", "p_base"))}}
                        for i in openers],
            "methods": rows}


__all__ = ["SETTINGS", "by_position", "compare_methods", "teacher_openers"]
