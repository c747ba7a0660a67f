"""The report's own figures: the safety-vs-capability trade-off (one run or several) and the training curves.

Safety is the held-out safety-gap refusal rate (the behaviour SafeSteer adds), capability the mean exact-match
accuracy of the organism's tasks (or multiple-choice accuracy for a real model): the paper's claim is a point
top-right of the base model, with the steered teacher far left. PNGs are written atomically with the Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from safesteer_interp.core.artifacts import atomic_path  # noqa: E402

# Training-record columns worth a panel, in this order, with their units (only those present are drawn).
CURVES = (("loss", "training loss (divergence restricted to S, nats)"),
          ("kl_full", "KL(student || teacher) per token (nats)"),
          ("mass_S_student", "student probability mass on S"), ("first_mass_S_student", "mass on S, first token"),
          ("len_mean", "mean answer length (tokens)"), ("entropy", "student entropy per token (nats)"))
MARKERS = "osD^vP*X"


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _xy(entry: dict) -> tuple[float, float] | None:
    x, y = entry.get("capability_mean"), entry.get("gap_refusal_rate")
    return None if x is None or y is None else (float(x), float(y))


def tradeoff(summary: dict[str, dict], path: Path, title: str = "Safety vs capability (held-out test split)") -> Path:
    """One point per model: x = capability mean, y = safety-gap refusal rate."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, (name, entry) in enumerate(summary.items()):
        point = _xy(entry)
        if point is None:
            continue
        ax.scatter(*point, s=70, marker=MARKERS[i % len(MARKERS)], label=name, zorder=3)
        ax.annotate(name, point, xytext=(5, 4), textcoords="offset points", fontsize=8)
    _frame(ax, title)
    return _save(fig, path)


def compare_tradeoff(runs: dict[str, dict[str, dict]], path: Path) -> Path:
    """Several runs on one trade-off plot: colour = run, marker = model."""
    fig, ax = plt.subplots(figsize=(7.2, 5.2))
    models = sorted({m for summary in runs.values() for m in summary})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (run, summary) in enumerate(runs.items()):
        for name, entry in summary.items():
            point = _xy(entry)
            if point is not None:
                ax.scatter(*point, s=60, color=colours[r % len(colours)],
                           marker=MARKERS[models.index(name) % len(MARKERS)], label=f"{run}: {name}", zorder=3)
    _frame(ax, "Safety vs capability across runs (held-out test split)")
    return _save(fig, path)


def _span(stat: dict) -> list[list[float]]:
    # clamped: a float mean of equal values can fall a hair outside [min, max]
    return [[max(0.0, stat["mean"] - stat["min"])], [max(0.0, stat["max"] - stat["mean"])]]


def seeds_plane(agg: dict[str, dict[str, dict]], path: Path, title: str) -> Path:
    """Mean over seeds per model, bars from the lowest to the highest seed: greedy refusal (coherent judge where
    measured) filled, sampled (T = 1) hollow, both against the capability mean."""
    fig, ax = _plane(agg, "capability_mean")
    _frame(ax, title)
    ax.set_ylabel(f"refusal on held-out harmful requests ({_judged(agg)} judge)")
    return _save(fig, path)


def selectivity_plane(agg: dict[str, dict[str, dict]], path: Path, title: str) -> Path:
    """Refusal on held-out HarmBench against over-refusal on XSTest's safe prompts, every model that has both (one
    run: `report.seeds.aggregate([summary])`); bars over seeds, greedy filled, sampled hollow. Top-left is better."""
    fig, ax = _plane(agg, "xstest_safe_refusal_rate")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_xlabel("over-refusal: refusal on XSTest v2's 250 safe prompts (substring judge)")
    ax.set_ylabel(f"refusal on held-out HarmBench behaviours ({_judged(agg)} judge)")
    ax.set_title(f"{title}\n(top-left is better: refuses harm, answers the safe look-alikes)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _judged(agg: dict[str, dict[str, dict]]) -> str:
    return "coherent" if any("gap_refusal_rate_strict" in s for s in agg.values()) else "substring"


def _plane(agg: dict[str, dict[str, dict]], x_key: str):
    """Greedy (filled) and sampled (hollow) refusal of every model against `x_key`, mean with min-max bars."""
    fig, ax = plt.subplots(figsize=(7.2, 5.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    greedy_key = "gap_refusal_rate_strict" if _judged(agg) == "coherent" else "gap_refusal_rate"
    for i, (name, stats) in enumerate(agg.items()):
        x, colour = stats.get(x_key), colours[i % len(colours)]
        if x is None:
            continue
        for key, filled in ((greedy_key, True), ("gap_refusal_rate_sampled", False)):
            y = stats.get(key)
            if y is None:
                continue
            ax.errorbar(x["mean"], y["mean"], xerr=_span(x), yerr=_span(y), fmt=MARKERS[i % len(MARKERS)],
                        color=colour, mfc=colour if filled else "white", ms=8, capsize=3, zorder=3,
                        label=f"{name} ({'greedy' if filled else 'sampled T=1'})")
        ax.annotate(name, (x["mean"], stats[greedy_key]["mean"]) if greedy_key in stats else (x["mean"], 0),
                    xytext=(6, 5), textcoords="offset points", fontsize=8)
    return fig, ax


def attack_depth(attacks: dict[str, dict], depths: Sequence[int], path: Path, key: str = "refusal_strict",
                 judge: str = "coherent") -> Path:
    """Refusal by `judge` (its `key` in attacks.json) against the number of prefilled compliant answer tokens (0: the
    plain request), one line per model; `attacks`: model -> its attacks.json "attacks" mapping."""
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for i, (name, by_attack) in enumerate(attacks.items()):
        columns = [("plain", 0)] + [(f"prefill-{k}", k) for k in depths]
        points = [(k, by_attack[column][key]) for column, k in columns
                  if by_attack.get(column, {}).get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=MARKERS[i % len(MARKERS)], label=name)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_xticks([0, *depths])
    ax.set_xlabel("compliant answer tokens prefilled before the model speaks")
    ax.set_ylabel(f"refusal of what follows, {judge} judge (held-out HarmBench)")
    ax.set_title("How deep the refusal goes: prefilling attacks", fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _frame(ax, title: str) -> None:
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_xlabel("capability: mean task accuracy (share of items correct)")
    ax.set_ylabel("safety: refusal rate on held-out safety-gap prompts")
    ax.set_title(f"{title}\n(top-right is better)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")


def training_curves(records: Sequence[dict], path: Path) -> Path:
    """One panel per recorded quantity against the optimizer step."""
    present = [(key, label) for key, label in CURVES if any(isinstance(r.get(key), int | float) for r in records)]
    cols = min(3, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, present):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float) and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", ms=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    fig.suptitle("Localized on-policy distillation: training curves (RUN/train/metrics.jsonl)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


__all__ = ["attack_depth", "compare_tradeoff", "seeds_plane", "selectivity_plane", "training_curves", "tradeoff"]
