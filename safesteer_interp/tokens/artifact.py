"""The safety-token stage's artifacts in `RUN/tokens/`: what S is, why, and how much to trust it.

`tokens.json` (S best first with every explanation, both sizes, stability), `trace.jsonl` (one line per selection
in the reference's trace format), `scores.safetensors` (per-vocabulary summaries), three PNG plots and `tokens.md`.
Everything is written atomically; plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import torch  # noqa: E402
from jaxtyping import Int  # noqa: E402
from torch import Tensor  # noqa: E402

from safesteer_interp.core.artifacts import atomic_path, read_json, write_json, write_jsonl, write_tensors  # noqa: E402
from safesteer_interp.errors import SafeSteerError  # noqa: E402
from safesteer_interp.tokens.explain import TokenResult, reason  # noqa: E402
from safesteer_interp.tokens.vote import Selection, mass_curve, saturation, vote_warning  # noqa: E402


def trace_record(label: str, selection: Selection, tokenizer, horizon: int, step: int = 0) -> dict:
    """The reference's `safe_tokens_trace.jsonl` fields, plus which selection this is."""
    ids, stats = selection.ids, selection.stats
    return {"step": step, "selection": label, "horizon": horizon, "ranked_by": selection.ranked_by,
            "k": selection.k, "token_ids": ids, "tokens": [tokenizer.decode([i]) for i in ids],
            "scores": [round(s, 6) for s in selection.scores], "prob_baseline": stats.p_base[ids].tolist(),
            "prob_steered": stats.p_steered[ids].tolist()}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_votes(items: list[dict], n_valid: int, path: Path) -> None:
    """Votes of each token of S, stacked by the answer position that cast them."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(items) + 2), 4))
    labels = [repr(item["text"]) for item in items]
    horizon = len(items[0]["votes_by_position"]) if items else 0
    bottom = [0] * len(items)
    for h in range(horizon):
        heights = [item["votes_by_position"][h] for item in items]
        ax.bar(range(len(items)), heights, bottom=bottom, label=f"answer position {h + 1}")
        bottom = [b + x for b, x in zip(bottom, heights, strict=True)]
    ax.set_xticks(range(len(items)), labels, rotation=70, fontsize=8)
    ax.set_xlabel("safety token (best first)")
    ax.set_ylabel("votes (records, of which there are " f"{n_valid})")
    ax.set_title("Safety tokens S: records voting for each token (top-K' by Δ), by answer position")
    if horizon:
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_probs(items: list[dict], path: Path) -> None:
    """Mean pi_0 vs pi_T probability of each token of S: above the diagonal = the teacher raises it."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = [max(item["p_base"], 1e-12) for item in items]
    ys = [max(item["p_steered"], 1e-12) for item in items]
    points = ax.scatter(xs, ys, c=[item["mass_share"] for item in items], cmap="viridis", s=25)
    fig.colorbar(points, ax=ax, label="share of the Δ-weighted teacher mass")
    for x, y, item in zip(xs, ys, items[:25], strict=False):
        ax.annotate(repr(item["text"]), (x, y), fontsize=7, xytext=(3, 2), textcoords="offset points")
    lo = min(xs + ys + [1e-6]) / 2
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8, ls="--", label="p_steered = p_base")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("mean base probability p_base (valid records, log scale)")
    ax.set_ylabel("mean steered-teacher probability p_steered (log scale)")
    ax.set_title("Safety tokens S: base vs steered probability")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_mass_curve(selection: Selection, share: float, fixed_k: int | None, auto_size: int, path: Path) -> None:
    """Cumulative Δ-weighted teacher mass of the top-n tokens by mass, with the chosen sizes marked."""
    curve = mass_curve(selection.stats)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(curve) + 1), curve.tolist(), marker=".", ms=3)
    ax.axhline(share, color="grey", ls="--", lw=0.8, label=f"share {share:.0%}")
    ax.axvline(auto_size, color="tab:green", lw=1, label=f"k auto = {auto_size}")
    if fixed_k is not None:
        ax.axvline(fixed_k, color="tab:red", lw=1, ls=":", label=f"fixed K = {fixed_k}")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of tokens n (ranked by Δ-weighted teacher mass, log scale)")
    ax.set_ylabel("cumulative share of positive Δ-weighted teacher mass")
    ax.set_title("How many tokens carry the teacher's push")
    ax.legend(fontsize=7)
    _save(fig, path)


def markdown(result: TokenResult) -> str:
    """A one-page summary a person can read."""
    cfg, n_valid = result.config, result.selection.stats.n_valid
    lines = [f"# Safety tokens S ({result.selection_label})", "",
             f"Teacher: {cfg['teacher']}; prompts: {cfg['n_prompts']} {cfg['on']}; H={cfg['horizon']}, "
             f"M={cfg['samples']}, seed {cfg['seed']}; {n_valid} valid records.", "",
             f"- fixed K={cfg['k_fixed']} ({cfg['method']}): {len(result.fixed.ids)} tokens carrying "
             f"{result.fixed.mass_share:.1%} of the Δ-weighted teacher mass",
             f"- k auto (share {cfg['share']:.0%}): {len(result.auto.ids)} tokens carrying "
             f"{result.auto.mass_share:.1%}", ""]
    warning = vote_warning(result.fixed, cfg["k_inner"])
    if warning:
        lines[-1:-1] = [f"- warning (fixed K): {warning}"]
    if result.stability is not None:
        lines += ["| setting | size of S | Jaccard halves | Jaccard seeds |", "|---|---|---|---|"]
        for key, entry in result.stability.by_k.items():
            lines.append(f"| k={key} | {entry['size']} | {entry['jaccard_halves']} | {entry['jaccard_seeds']} |")
        lines.append("")
    lines += methods_table(result.methods)
    lines += ["| # | token | why |", "|---|---|---|"]
    for item in result.explanations[:20]:
        lines.append(f"| {item['rank']} | `{item['text']!r}` | {reason(item, n_valid)} |")
    lines.append("")
    for item in result.explanations[:5]:
        if item["examples"]:
            ex = item["examples"][0]
            lines.append(f"- `{item['text']!r}` ranks #{ex['rank']} (Δ {ex['delta']:+.2f}) after "
                         f"\"{ex['prompt']}\" → \"{ex['prefix']}\"")
    lines += ["", "Plots: `votes.png`, `probs.png`, `mass_curve.png`. Everything else: `tokens.json`.", ""]
    return "\n".join(lines)


def methods_table(methods: dict | None) -> list[str]:
    """Every selection method on the same records: what S would carry at answer positions 1-3, and its stability."""
    if not methods:
        return []
    openers = ", ".join(repr(o["token"]) for o in methods["openers"])
    lines = [f"Selection methods on these records (teacher openers: {openers}):", "",
             "| method | size | contrast share | at positions " + "/".join(map(str, methods["positions"]))
             + " | first-token p teacher / base | openers in S | Jaccard halves / seeds |",
             "|---|---|---|---|---|---|---|"]
    for label, row in methods["methods"].items():
        lines.append(f"| {label} | {row['size']} | {row['contrast_share']:.3f} | "
                     + " / ".join(f"{x:.3f}" for x in row["contrast_share_by_position"])
                     + f" | {row['p_teacher_first']:.3f} / {row['p_base_first']:.3f} | {len(row['openers_in_s'])}"
                     f"/{len(methods['openers'])} | {row['jaccard_halves']} / {row['jaccard_seeds']} |")
    return [*lines, ""]


def write_report(out: Path, result: TokenResult, tokenizer) -> Path:
    """Write every artifact of the stage into `out` (normally `RUN/tokens/`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats, horizon = result.selection.stats, result.config["horizon"]
    tokens_json = {
        "selection": result.selection_label, "config": result.config, "n_valid_records": stats.n_valid,
        "tokens": result.explanations,
        "sizes": {"fixed": {"k": result.config["k_fixed"], "method": result.config["method"],
                            "ids": result.fixed.ids, "size": len(result.fixed.ids),
                            "mass_share": round(result.fixed.mass_share, 6),
                            "vote_saturation": round(saturation(result.fixed), 4),
                            "vote_warning": vote_warning(result.fixed, result.config["k_inner"])},
                  "auto": {"share": result.config["share"], "ids": result.auto.ids, "size": len(result.auto.ids),
                           "mass_share": round(result.auto.mass_share, 6),
                           "curve": [round(x, 6) for x in mass_curve(stats)[:200].tolist()]}},
        "stability": None if result.stability is None else result.stability.summary(),
        "dla": result.dla_info,
    }
    write_json(out / "tokens.json", tokens_json)
    if result.methods is not None:
        write_json(out / "methods.json", result.methods)
    trace = [trace_record("main", result.selection, tokenizer, horizon)]
    trace.append(trace_record("auto" if result.selection.k != "auto" else "fixed",
                              result.auto if result.selection.k != "auto" else result.fixed, tokenizer, horizon))
    if result.stability is not None:
        trace += [trace_record(label, sel, tokenizer, horizon) for label, sel in result.stability.selections]
    write_jsonl(out / "trace.jsonl", trace)
    write_tensors(out / "scores.safetensors",
                  {"votes": stats.votes, "votes_by_position": stats.votes_by_position, "mean_delta": stats.mean_delta,
                   "max_delta": stats.max_delta, "p_base": stats.p_base, "p_steered": stats.p_steered,
                   "mass": stats.mass, "banned": stats.banned.to(dtype=stats.votes.dtype)},
                  {"axes": "vocab (votes_by_position: horizon vocab)", "selection": result.selection_label})
    plot_votes(result.explanations, stats.n_valid, out / "votes.png")
    plot_probs(result.explanations, out / "probs.png")
    plot_mass_curve(result.selection, result.config["share"], result.config["k_fixed"], len(result.auto.ids),
                    out / "mass_curve.png")
    with atomic_path(out / "tokens.md") as tmp:
        tmp.write_text(markdown(result))
    return out


def tokens_file(run: str | Path) -> Path:
    return Path(run) / "tokens" / "tokens.json"


def read_tokens(run: str | Path) -> dict:
    """`RUN/tokens/tokens.json` as written by `write_report` (S with its explanations, sizes, stability, config)."""
    path = tokens_file(run)
    if not path.is_file():
        raise SafeSteerError(f"no safety tokens at {path}; run `safesteer-interp tokens --run {run}` first, or "
                             "train with --vocab topk/full")
    return read_json(path, "safety tokens")


def load_safety_tokens(run: str | Path) -> Int[Tensor, " k"]:
    """The ids of the safety-token set S of a run, best first."""
    path, entries = tokens_file(run), read_tokens(run).get("tokens")
    if not entries or not all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in entries):
        raise SafeSteerError(f"{path} has no usable 'tokens' list (objects with an integer 'id'); rerun the tokens "
                             "stage")
    return torch.tensor([e["id"] for e in entries], dtype=torch.long)


__all__ = ["load_safety_tokens", "markdown", "plot_mass_curve", "plot_probs", "plot_votes", "read_tokens",
           "tokens_file", "trace_record", "write_report"]
