"""Why each safety token is in S: its evidence, its best contexts, its direct logit attribution, and S's stability.

Every selected token gets the numbers that put it there (votes, by answer position; mean / max Δ; mean pi_0 and pi_T
probabilities; Δ-weighted mass), the three contexts where it ranked highest, and how strongly the steering vector
writes it directly through the unembedding. Stability re-selects S on disjoint prompt halves and on a second seed.
`TokenResult` holds S with all of this: the stage returns it and `tokens.artifact` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.anatomy import final_norm, unembed
from safesteer_interp.tokens.contrast import ContrastRecords, context_text, flatten_valid
from safesteer_interp.tokens.vote import Selection, TokenStats, VoteConfig, rank_tokens, resamples, stats_for


# ------------------------------------------------------------------------------------- direct logit attribution
@torch.no_grad()
def direct_logit_attribution(model, vector: Float[Tensor, " d_model"], coeff: float = 1.0,
                             rms: float = 1.0) -> Float[Tensor, " vocab"]:
    """Logit each token gains if `coeff * vector` reached the unembedding unchanged, relative to the average token.

    DLA(v) = W_U[v] · (γ ⊙ coeff·r) / rms - mean_u(same for u), where γ is the final norm's gain and `rms` the
    typical RMS of the residual stream entering the final norm (the norm divides by it). Centring removes the part
    that shifts every logit alike and so cannot change a probability. For a LayerNorm the mean of r is removed too.
    """
    norm, gain = final_norm(model)
    v = coeff * vector.detach().float().cpu()
    if isinstance(norm, torch.nn.LayerNorm):
        v = v - v.mean()
    if gain is not None:
        v = v * gain.to(v.device)
    w_u = unembed(model).weight.detach()
    v = v.to(w_u.device)
    # Row blocks in float32 on the unembedding's own device: no fp32 copy of a 150k x d_model matrix at once.
    logits = torch.cat([(w_u[i:i + 16384].float() @ v).cpu() for i in range(0, w_u.shape[0], 16384)]) / rms
    return logits - logits.mean()


def typical_final_rms(records: ContrastRecords) -> float:
    """Mean RMS of the teacher's residual entering the final norm over the valid records (1.0 if not recorded)."""
    if records.final_rms is None:
        return 1.0
    return float(records.final_rms[records.valid].mean())


# ----------------------------------------------------------------------------------------------- explanations
def ranks_in_records(records: ContrastRecords, banned: Bool[Tensor, " vocab"], ids: list[int], *,
                     rows: int = 16) -> Int[Tensor, "record token"]:
    """1-based rank of each token of `ids` by Δ among the allowed tokens of every valid record."""
    target = torch.tensor(ids, dtype=torch.long)
    out = []
    for start in range(0, records.valid.shape[0], rows):  # a few rows at a time: a [record, vocab] sort is large
        valid = records.valid[start:start + rows]
        delta = flatten_valid(records.lp_steered[start:start + rows] - records.lp_base[start:start + rows], valid)
        masked = delta.masked_fill(banned, -torch.inf)
        ascending = masked.sort(-1).values
        greater = masked.shape[1] - torch.searchsorted(ascending, masked[:, target].contiguous(), right=True)
        out.append(greater + 1)
    return torch.cat(out) if out else torch.zeros(0, len(ids), dtype=torch.long)


def explain_tokens(selection: Selection, records: ContrastRecords, tokenizer,
                   dla: Float[Tensor, " vocab"] | None = None, n_examples: int = 3) -> list[dict]:
    """One JSON-ready record per token of S, best first, with the evidence behind its place."""
    stats, ids = selection.stats, selection.ids
    if not ids:
        return []
    rows, positions = records.valid.nonzero(as_tuple=True)  # valid records in the same order as flatten_valid
    columns = torch.tensor(ids, dtype=torch.long)  # only S's columns: [record, |S|], not [record, vocab]
    lp_s = flatten_valid(records.lp_steered[..., columns], records.valid)
    lp_b = flatten_valid(records.lp_base[..., columns], records.valid)
    delta = lp_s - lp_b
    ranks = ranks_in_records(records, stats.banned, ids)
    dla_rank = None
    if dla is not None:
        allowed = torch.where(stats.banned, -torch.inf, dla)
        dla_rank = torch.argsort(torch.argsort(allowed, descending=True, stable=True)) + 1
    out = []
    for j, (v, score) in enumerate(zip(ids, selection.scores, strict=True)):
        by_pos = stats.votes_by_position[:, v].tolist()
        d = delta[:, j]
        order = torch.argsort(d, descending=True, stable=True)  # best rank first, then the largest Δ
        order = order[torch.argsort(ranks[order, j], stable=True)].tolist()
        examples, seen = [], set()
        for r in order:
            row, h = int(rows[r]), int(positions[r])
            key = (int(records.prompt_index[row]), tuple(records.continuation[row, :h].tolist()))
            if key in seen:  # the M samples of a prompt share their context at h = 1
                continue
            seen.add(key)
            prompt, prefix = context_text(tokenizer, records, row, h)
            examples.append({"prompt": prompt, "prefix": prefix, "position": h + 1, "rank": int(ranks[r, j]),
                             "delta": round(float(d[r]), 4), "p_base": float(lp_b[r, j].exp()),
                             "p_steered": float(lp_s[r, j].exp())})
            if len(examples) == n_examples:
                break
        item = {
            "rank": j + 1, "id": v, "token": tokenizer.convert_ids_to_tokens(v), "text": tokenizer.decode([v]),
            "score": round(float(score), 6), "votes": int(stats.votes[v]),
            "votes_by_position": by_pos, "positions": [h + 1 for h, n in enumerate(by_pos) if n > 0],
            "mean_delta": round(float(stats.mean_delta[v]), 4), "max_delta": round(float(stats.max_delta[v]), 4),
            "p_base": float(stats.p_base[v]), "p_steered": float(stats.p_steered[v]),
            "mass_share": round(float(stats.mass[v]), 6), "examples": examples,
        }
        if dla is not None:
            item["dla"] = round(float(dla[v]), 4)
            item["dla_rank"] = int(dla_rank[v])
        out.append(item)
    return out


def reason(item: dict, n_valid: int) -> str:
    """A one-line explanation of a token's place in S, for the terminal and tokens.md."""
    where = ", ".join(f"h{h}" for h in item["positions"]) or "-"
    text = (f"{item['votes']}/{n_valid} votes ({where}); p {item['p_base']:.2g} -> {item['p_steered']:.2g}; "
            f"mean Δ {item['mean_delta']:+.2f}; mass {item['mass_share']:.1%}")
    if "dla" in item:
        text += f"; DLA {item['dla']:+.2f} (#{item['dla_rank']})"
    return text


# ----------------------------------------------------------------------------------------------- stability
def jaccard(a: list[int], b: list[int]) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


@dataclass(frozen=True)
class Stability:
    """Jaccard overlaps of S re-selected on disjoint prompt halves and on a second sampling seed."""

    by_k: dict[str, dict]  # "auto" / "5" / "20" / "50" / the main K -> overlaps and sizes
    main: str  # the key of the main setting
    selections: list[tuple[str, Selection]]  # (label, selection) for the trace
    seeds_informative: bool = True  # False when nothing is sampled (H = 1 or M = 1): both seeds then agree trivially

    def summary(self) -> dict:
        main = self.by_k[self.main]
        return {"jaccard_halves": main["jaccard_halves"], "jaccard_seeds": main["jaccard_seeds"],
                "main": self.main, "halves": "prompts split by even / odd index",
                "seeds_informative": self.seeds_informative, "by_k": self.by_k}


def stability(records: ContrastRecords, other_seed: ContrastRecords | None, special: Bool[Tensor, " vocab"],
              config: VoteConfig, ks: tuple[int, ...] = (5, 20, 50), *, full: TokenStats | None = None,
              resampled: dict[str, TokenStats] | None = None) -> Stability:
    """Re-select S on the even- and odd-indexed prompts (disjoint halves; banning recomputed per half) and on the
    records of a second seed: at `k="auto"`, at every K in `ks` and the main K with the configured ranking (keys
    "auto", "5", ...), and, when that ranking is not already the mass, at every K by mass (keys "mass@5", ...).
    `full` and `resampled` (`vote.resamples`) spare recomputing statistics the caller already has."""
    settings: list[tuple[str, int | str, str]] = [("auto", "auto", config.method)]
    settings += [(str(k), k, config.method) for k in dict.fromkeys([*ks, config.k]) if k != "auto"]
    if config.method != "mass":
        settings += [(f"mass@{k}", k, "mass") for k in ks]
    resampled = resamples(records, other_seed, special, config) if resampled is None else resampled
    halves = (resampled["half_a"], resampled["half_b"]) if "half_a" in resampled else None
    seed_stats = resampled.get("seed_b")
    full = stats_for(records, config, special) if full is None else full
    by_k, selections = {}, []
    for key, k, method in settings:
        entry = {}
        main = rank_tokens(full, k, method, config.share)
        if halves is not None:
            a, b = (rank_tokens(s, k, method, config.share) for s in halves)
            entry.update(jaccard_halves=round(jaccard(a.ids, b.ids), 4), size_half_a=len(a.ids),
                         size_half_b=len(b.ids))
            selections += [(f"half_a/k={key}", a), (f"half_b/k={key}", b)]
        else:
            entry["jaccard_halves"] = None
        if seed_stats is not None:
            s = rank_tokens(seed_stats, k, method, config.share)
            entry.update(jaccard_seeds=round(jaccard(main.ids, s.ids), 4), size_seed_b=len(s.ids))
            selections.append((f"seed_b/k={key}", s))
        else:
            entry["jaccard_seeds"] = None
        entry["size"] = len(main.ids)
        by_k[key] = entry
    sampled = records.horizon > 1 and records.meta.get("samples", 2) > 1
    return Stability(by_k, str(config.k), selections, seeds_informative=sampled)


@dataclass(frozen=True)
class TokenResult:
    """S and everything that explains it: what the tokens stage returns and `tokens.artifact` writes."""

    selection: Selection  # the main S: fixed K (reference) or k auto
    fixed: Selection  # the reference's fixed-K set (always computed)
    auto: Selection  # the automatic-size set (always computed)
    explanations: list[dict]  # one per token of `selection`, best first
    stability: Stability | None
    records: ContrastRecords
    config: dict
    dla_info: dict | None
    methods: dict | None = None  # every selection method on the same records (`tokens.methods`), for the choice

    @property
    def ids(self) -> list[int]:
        return self.selection.ids

    @property
    def selection_label(self) -> str:
        if self.selection.k == "auto":
            return f"k auto (share {self.config['share']:.0%} of the Δ-weighted teacher mass)"
        return f"{self.config['method']}, K={self.selection.k}"


__all__ = ["Stability", "TokenResult", "direct_logit_attribution", "explain_tokens", "jaccard", "ranks_in_records",
           "reason", "stability", "typical_final_rms"]
