"""Aggregation: from per-record contrasts to one global safety-token set S.

`token_stats` summarises every vocabulary token over the valid records (votes, mean/max Δ, mean probabilities,
Δ-weighted teacher mass); `rank_tokens` turns the summaries into S: the reference's vote or mean ranking with a
fixed K, or `k="auto"`, the smallest set carrying a chosen share of the positive Δ-weighted teacher mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.errors import SafeSteerError
from safesteer_interp.tokens.contrast import ContrastRecords, flatten_valid

Method = Literal["vote", "mean", "mass"]  # vote / mean: the reference; mass: our variant


K_INNER_REFERENCE = 200  # the released scripts' vote_top_k_inner (0.13-0.16 % of the paper models' vocabularies)
K_INNER_SHARE = 0.02  # ... capped at 2 % of the vocabulary, which only bites below 10,000 tokens


def resolve_k_inner(k_inner: int | Literal["auto"], vocab: int) -> int:
    """K' as an integer. "auto" is the reference's 200, or 2 % of the vocabulary (rounded up) when that is smaller:
    exactly 200 on every real chat model (vocabularies of 32k-262k), 10 on the organism's 468 tokens, where K'=200
    would make every record vote for 43 % of the vocabulary and the vote count stop ranking anything (see
    `vote_warning`; what each K' gives on the organism is in docs/organism.md)."""
    if k_inner == "auto":
        return max(1, min(K_INNER_REFERENCE, math.ceil(K_INNER_SHARE * vocab)))
    return int(k_inner)


@dataclass(frozen=True)
class VoteConfig:
    """How the records elect S: the reference's knobs (released scripts: vote, K=50, K'=200) plus the automatic
    size."""

    k: int | Literal["auto"] = 50  # |S| at most K (fewer if fewer tokens score > 0); "auto": by mass share
    method: Method = "vote"
    k_inner: int | Literal["auto"] = "auto"  # K': tokens voted for per record ("auto": see resolve_k_inner)
    min_prob: float = 1e-6  # ban tokens whose mean pi_T probability over valid records is below this
    exclude_special: bool = True
    share: float = 0.95  # for k="auto": share of the positive Δ-weighted teacher mass S must carry

    def __post_init__(self):
        if self.k != "auto" and (not isinstance(self.k, int) or self.k < 1):
            raise SafeSteerError(f"k must be a positive integer or 'auto', not {self.k!r}")
        if self.method not in ("vote", "mean", "mass"):
            raise SafeSteerError(f"method must be 'vote', 'mean' or 'mass', not {self.method!r}")
        if self.k_inner != "auto" and (not isinstance(self.k_inner, int) or self.k_inner < 1):
            raise SafeSteerError(f"k_inner (K') must be a positive integer or 'auto', not {self.k_inner!r}")
        if not 0 < self.share <= 1 or self.min_prob < 0:
            raise SafeSteerError(f"need k_inner >= 1, 0 < share <= 1 and min_prob >= 0; got k_inner={self.k_inner}, "
                                 f"share={self.share}, min_prob={self.min_prob}")


@dataclass(frozen=True)
class TokenStats:
    """Every vocabulary token summarised over the N valid records (row, h)."""

    n_valid: int
    votes: Int[Tensor, " vocab"]  # records in whose top-K' (by Δ, banned tokens excluded) the token is
    votes_by_position: Int[Tensor, "horizon vocab"]  # the same votes split by answer position h
    mean_delta: Float[Tensor, " vocab"]  # (1/N) Σ_valid Δ
    max_delta: Float[Tensor, " vocab"]
    p_steered: Float[Tensor, " vocab"]  # (1/N) Σ_valid pi_T(v | .)
    p_base: Float[Tensor, " vocab"]
    mass: Float[Tensor, " vocab"]  # Δ-weighted teacher mass, normalised over allowed tokens (see token_stats)
    banned: Bool[Tensor, " vocab"]


@dataclass(frozen=True)
class Selection:
    """S, best first, with the score it was ranked by."""

    ids: list[int]
    scores: list[float]  # votes (vote), mean Δ (mean) or share of the Δ-weighted teacher mass (mass, auto)
    ranked_by: Literal["vote", "mean", "mass"]
    k: int | Literal["auto"]
    stats: TokenStats

    @property
    def mass_share(self) -> float:
        """Share of the positive Δ-weighted teacher mass that S carries."""
        return float(self.stats.mass[self.ids].sum()) if self.ids else 0.0


def valid_chunks(records: ContrastRecords, rows: int):
    """(lp_steered, lp_base, position) of the valid records, a few rows at a time: bounded memory for 150k vocabs."""
    for start in range(0, records.valid.shape[0], rows):
        valid = records.valid[start:start + rows]
        if not valid.any():  # e.g. the base ends its turn at once on every row here: nothing to reduce over
            continue
        h = einops.repeat(torch.arange(records.horizon), "horizon -> row horizon", row=valid.shape[0])[valid]
        yield (flatten_valid(records.lp_steered[start:start + rows], valid),
               flatten_valid(records.lp_base[start:start + rows], valid), h)


def token_stats(records: ContrastRecords, special: Bool[Tensor, " vocab"] | None,
                k_inner: int | Literal["auto"] = "auto", min_prob: float = 1e-6, *, chunk: int = 64) -> TokenStats:
    """Summaries of every token over the valid records, with the reference's banning and K'-voting.

    Banned: `special` (pass None to keep special tokens) plus every token whose mean teacher probability over the
    valid records is below `min_prob`.

    Δ-weighted teacher mass of token v: m(v) = Σ_valid pi_T(v|r,h) · max(Δ(r,h,v), 0), with m = 0 for banned
    tokens, normalised to sum to 1. Each term is v's positive contribution to KL(pi_T || pi_0) at that record, so m
    says which tokens carry the teacher's push away from the base, weighted by how likely the teacher makes them:
    a token with a huge log-ratio but negligible teacher probability (junk) gets ~0 mass.
    """
    valid, H, V = records.valid, records.horizon, records.vocab
    k_inner = resolve_k_inner(k_inner, V)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise SafeSteerError("every answer position is masked: the base model ends its turn at the first answer "
                             "token on all prompts; use other prompts (e.g. --on harmless) or check the template")
    # Pass 1: sums over records (the floor needs the mean teacher probability before anyone can vote).
    sum_s, sum_b, sum_d, max_d, mass = (torch.zeros(V) for _ in range(5))
    max_d.fill_(-torch.inf)
    for lp_s, lp_b, _h in valid_chunks(records, chunk):
        delta, p_s = lp_s - lp_b, lp_s.exp()
        sum_s += p_s.sum(0)
        sum_b += lp_b.exp().sum(0)
        sum_d += delta.sum(0)
        max_d = torch.maximum(max_d, delta.max(0).values)
        mass += (p_s * delta.clamp(min=0)).sum(0)
    p_steered = sum_s / n_valid
    banned = torch.zeros(V, dtype=torch.bool) if special is None else special.clone()
    if min_prob > 0:
        banned |= p_steered < min_prob
    n_allowed = int((~banned).sum())
    if n_allowed == 0:
        raise SafeSteerError(f"every token is banned (specials and mean teacher probability < {min_prob}); "
                             "lower --min-prob")

    # Pass 2: each valid record votes for its top-K' allowed tokens by Δ. Only allowed tokens can get a vote, even
    # when K' exceeds their number (the reference would let -inf banned tokens fill the list in that corner case).
    votes_by_position = torch.zeros(H * V, dtype=torch.long)
    for lp_s, lp_b, h in valid_chunks(records, chunk):
        top = (lp_s - lp_b).masked_fill_(banned, -torch.inf).topk(min(k_inner, n_allowed), dim=-1).indices
        votes_by_position += torch.bincount((h[:, None] * V + top).flatten(), minlength=H * V)
    votes_by_position = votes_by_position.reshape(H, V)

    mass = mass.masked_fill(banned, 0.0)
    total = mass.sum()
    return TokenStats(n_valid=n_valid, votes=votes_by_position.sum(0), votes_by_position=votes_by_position,
                      mean_delta=sum_d / n_valid, max_delta=max_d, p_steered=p_steered, p_base=sum_b / n_valid,
                      mass=mass / total if total > 0 else mass, banned=banned)


def _order(*keys: Tensor) -> Int[Tensor, " vocab"]:
    """Indices sorted by the keys in turn (all descending), then by id ascending: deterministic ties."""
    order = torch.arange(len(keys[0]))
    for key in reversed(keys):  # stable sorts from the last key to the first = lexicographic order
        order = order[torch.argsort(key[order], descending=True, stable=True)]
    return order


def rank_tokens(stats: TokenStats, k: int | Literal["auto"] = 50, method: Method = "vote",
                share: float = 0.95) -> Selection:
    """S from the summaries.

    vote: the K tokens with most votes, keeping only tokens with at least one vote. Ties go to the larger Δ-weighted
    mass, then the larger mean Δ, then the lower id. Named departure "deterministic ties": the reference leaves ties
    to `torch.topk`'s unspecified order. Ties are common when K' is a large share of a small vocabulary: every record
    then votes for most tokens (see `saturation`).
    mean: the K allowed tokens with the highest mean Δ, keeping only positive ones. Named departure "positive mean":
    the reference keeps the top K finite scores, so when fewer than K tokens have mean Δ > 0 it fills S with tokens
    the teacher makes *less* likely; the two agree whenever K tokens have a positive mean Δ (on real vocabularies,
    always in our runs).
    mass (our variant): the K allowed tokens with the largest Δ-weighted teacher mass, keeping only positive ones.
    k="auto": tokens by mass, cut at the smallest prefix whose mass reaches `share` (`method` is then unused: the
    size and the order both come from the mass).
    """
    allowed = ~stats.banned
    if k == "auto" or method == "mass":
        order = _order(stats.mass, stats.votes.float(), stats.mean_delta)
        order = order[(stats.mass[order] > 0) & allowed[order]]
        size = k
        if k == "auto":
            reached = (stats.mass[order].cumsum(0) >= share - 1e-6).nonzero()
            size = int(reached[0]) + 1 if len(reached) else len(order)
        ids = order[:size]
        return Selection(ids.tolist(), stats.mass[ids].tolist(), "mass", k, stats)
    if method == "vote":
        order = _order(stats.votes.float(), stats.mass, stats.mean_delta)
        keep = (stats.votes[order] > 0) & allowed[order]
        score = stats.votes.float()
    elif method == "mean":
        order = _order(stats.mean_delta)
        keep = (stats.mean_delta[order] > 0) & allowed[order]
        score = stats.mean_delta
    else:
        raise SafeSteerError(f"method must be 'vote', 'mean' or 'mass', not {method!r}")
    ids = order[keep][:k]
    return Selection(ids.tolist(), score[ids].tolist(), method, k, stats)


def saturation(selection: Selection) -> float:
    """Share of S whose votes equal the number of valid records: near 1, the votes no longer rank anything and the
    order of S comes from the tie-break (K' too large for the vocabulary, or a teacher that moves every token)."""
    if selection.ranked_by != "vote" or not selection.ids:
        return 0.0
    return float((selection.stats.votes[selection.ids] >= selection.stats.n_valid).float().mean())


def vote_warning(selection: Selection, k_inner: int | Literal["auto"]) -> str | None:
    """A one-line warning when the vote cannot rank well: K' is a large share of the allowed vocabulary (every
    record then votes for most tokens with Δ > 0, junk included) or most of S got a vote from every record."""
    if selection.ranked_by != "vote":
        return None
    k_inner = resolve_k_inner(k_inner, selection.stats.banned.numel())
    share, full = k_inner / max(int((~selection.stats.banned).sum()), 1), saturation(selection)
    if share <= 0.05 and full <= 0.5:
        return None
    return (f"K'={k_inner} is {min(share, 1):.0%} of the allowed vocabulary, so each record votes for most tokens it "
            f"raises at all, junk included ({full:.0%} of S got a vote from every record); prefer --k auto, "
            "--method mass or a K' of ~1-2% of the vocabulary")


def mass_curve(stats: TokenStats) -> Float[Tensor, " ranked"]:
    """Cumulative share of the Δ-weighted teacher mass carried by the top-n tokens by mass, n = 1, 2, ..."""
    ranked = stats.mass[~stats.banned].sort(descending=True).values
    return ranked[ranked > 0].cumsum(0)


def stats_for(records: ContrastRecords, config: VoteConfig, special: Bool[Tensor, " vocab"] | None) -> TokenStats:
    """`token_stats` with a config's banning (special tokens unless kept, the probability floor) and K'."""
    return token_stats(records, special if config.exclude_special else None, config.k_inner, config.min_prob)


def resamples(records: ContrastRecords, other_seed: ContrastRecords | None, special: Bool[Tensor, " vocab"] | None,
              config: VoteConfig) -> dict[str, TokenStats]:
    """`stats_for` of the even- and odd-indexed prompts ("half_a", "half_b": disjoint halves, present when both
    exist) and of a second sampling seed ("seed_b", when given): what the stability checks re-select S on."""
    even = records.prompt_index % 2 == 0
    out = {}
    if bool(even.any()) and bool((~even).any()):
        out["half_a"], out["half_b"] = (stats_for(records.rows(rows), config, special) for rows in (even, ~even))
    if other_seed is not None:
        out["seed_b"] = stats_for(other_seed, config, special)
    return out


def select_tokens(records: ContrastRecords, config: VoteConfig,
                  special: Bool[Tensor, " vocab"] | None) -> Selection:
    """The whole aggregation in one call: `token_stats` then `rank_tokens`."""
    return rank_tokens(stats_for(records, config, special), config.k, config.method, config.share)


__all__ = ["K_INNER_REFERENCE", "Method", "Selection", "TokenStats", "VoteConfig", "mass_curve", "rank_tokens",
           "resamples", "resolve_k_inner", "saturation", "select_tokens", "stats_for", "token_stats", "valid_chunks",
           "vote_warning"]
