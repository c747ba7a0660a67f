"""How far the null-space map steers each kind of prompt (issue 34): its share of stage 1's direction per prompt.

The mapped teacher adds coeff * (h Δ) (RUN/null-space/, `distill.null_space`); (h Δ) · r / |r|² is the share of
stage 1's direction it adds to a prompt: 1 on a harmful prompt the map reproduces, 0 on one in the benign prompts'
span. Read on the gate-form groups (held-out HarmBench as tasks and questions, look-alike and harmless test, XSTest,
rho) with one forward per prompt, no answers: where the teacher's selectivity comes from, or fails to.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import matplotlib.pyplot as plt

from safesteer_interp.direction.null_space import load_map, map_share, prompt_states
from safesteer_interp.distill.null_space import FOLDER

from .common import RunInputs, Writer
from .gate_form import GROUPS, prompt_groups, run_seed

STRONG = 0.5  # a prompt the map steers by at least half of stage 1's direction


def summarise(rows: list[dict], shares: list[float]) -> dict:
    """Mean share, the share of prompts steered >= STRONG, overall and per type."""
    by_type = defaultdict(list)
    for row, share in zip(rows, shares):
        by_type[row["type"]].append(share)
    mean = lambda values: round(sum(values) / len(values), 4)  # noqa: E731
    strong = lambda values: round(sum(v >= STRONG for v in values) / len(values), 4)  # noqa: E731
    return {"mean_share": mean(shares), "strong_rate": strong(shares), "n": len(rows),
            "by_type": {t: {"mean_share": mean(v), "strong_rate": strong(v)} for t, v in sorted(by_type.items())}}


def plot(shares: dict[str, list[float]]):
    """One strip of per-prompt shares per group, the groups to steer left of the line."""
    names = [g for g, _ in GROUPS if g in shares]
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    ax.boxplot([shares[g] for g in names], positions=range(len(names)), widths=0.6, showfliers=True)
    ax.axhline(STRONG, color="grey", lw=0.8, ls="--")
    ax.axvline(sum(dict(GROUPS)[g] == "steer" for g in names) - 0.5, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), [g.replace("harmbench-", "HarmBench ").replace("-", " ") for g in names],
                  rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("share of stage 1's direction added")
    ax.set_title("How far the null-space map steers each prompt (left of the line: harmful; right: benign)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def analyze(inputs: RunInputs, log: Callable[[str], None] = print) -> dict:
    """`analyze --only null_space`: the run's map (fitted by a `safesteer-null-space` row) read on every group."""
    run, title = inputs.run, "How far the null-space map steers each prompt"
    if not (run / FOLDER / "null_space.json").is_file():
        return {"title": title, "files": [], "headline": {},
                "skipped": f"no RUN/{FOLDER}/null_space.json: train `safesteer-null-space` on a real model first"}
    steering = load_map(run / FOLDER)
    target = inputs.direction.vector
    rates, prompts, shares = {}, [], {}
    for group, rows in prompt_groups(run, run_seed(run)).items():
        states = prompt_states(inputs.base, inputs.tokenizer, [r["prompt"] for r in rows], steering.layer,
                               steering.pos)
        shares[group] = [round(float(s), 4) for s in map_share(states, steering.matrix, target)]
        rates[group] = summarise(rows, shares[group])
        prompts += [{"group": group, "type": row["type"], "prompt": row["prompt"], "share": share}
                    for row, share in zip(rows, shares[group])]
        log(f"  null space on {group}: mean share {rates[group]['mean_share']:.3f}, >= {STRONG}: "
            f"{rates[group]['strong_rate']:.3f}")
    writer = Writer(run, "null_space")
    writer.jsonl("null_space_prompts.jsonl", prompts)
    writer.figure("null_space.png", plot(shares))
    writer.json("null_space.json", {
        "what": "the share of stage 1's direction the null-space map adds to each prompt: (h @ matrix) . r / |r|^2, "
                "h the prompt's resid_pre where stage 1 reads it",
        "how_to_read": f"rates[group]: mean share and the rate of prompts steered >= {STRONG}; by_type: XSTest's "
                       "types, rho's categories; null_space_prompts.jsonl: every prompt's share",
        "map": {"layer": steering.layer, "pos": steering.pos, "ratio": steering.ratio, "ridge": steering.ridge,
                "reason": steering.reason},
        "rates": rates, "should": dict(GROUPS)})
    headline = {f"{g}_mean_share": r["mean_share"] for g, r in rates.items()}
    return {"title": title, "files": writer.files, "headline": headline}
