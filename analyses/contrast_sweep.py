"""The contrast-set sweep (issue 34): how many benign training prompts keep a gated-teacher student selective.

Each `safesteer-gated-contrast-N` row, and `safesteer-gated` (n = 0), is evaluated on val only (HarmBench val, our
look-alike, harmless and capability val) into RUN/baselines/NAME/val/; `distill.gated.CONTRAST_RULE` chooses n on
those numbers, and the curve (refusal and over-refusal against n) goes to RUN/analysis/contrast/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from safesteer_interp.core.artifacts import read_json
from safesteer_interp.distill.gated import choose_contrast, gate_folder
from safesteer_interp.distill.variants import CONTRAST_SIZES
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.stage import REAL_ANSWER_TOKENS, evaluate, real_spec

from .common import Writer

# (key of the val evaluation, label): the rule reads over_refusal_rate, the rest are the curve's context
CURVE = (("gap_refusal_rate_strict", "refusal, HarmBench val (coherent, greedy)"),
         ("gap_refusal_rate_sampled", "refusal, HarmBench val (sampled T=1)"),
         ("over_refusal_rate", "over-refusal, look-alike val (the rule's number)"),
         ("harmless_refusal_rate", "refusal, harmless val"))


def row_name(n: int) -> str:
    return "safesteer-gated" if n == 0 else f"safesteer-gated-contrast-{n}"


def val_folder(run: Path, n: int) -> Path:
    return Path(run) / "baselines" / row_name(n) / "val"


def val_evaluation(run: str | Path, n: int, base, tokenizer, log: Callable[[str], None] | None = None) -> dict:
    """The val evaluation of the row with n benign prompts (kept in RUN/baselines/NAME/val/eval.json: read back when
    there). Greedy, REAL_ANSWER_TOKENS, the substring judge for over-refusal, as the gate's rule reads the base."""
    from safesteer_interp.core.models import load_model  # lazy: the sweep itself only reads JSON

    done = val_folder(Path(run), n) / "eval.json"
    if done.is_file():
        return read_json(done, f"{row_name(n)} val evaluation")
    model_dir = Path(run) / "baselines" / row_name(n) / "train" / "model"
    if not (model_dir / "config.json").is_file():
        raise SafeSteerError(f"{model_dir} holds no trained model; train it first (`run --baseline {row_name(n)}`)")
    student, _ = load_model(str(model_dir))
    return evaluate(student, tokenizer, name=row_name(n), base=base, spec=real_spec("val"), split="val",
                    out_dir=val_folder(Path(run), n), max_new_tokens=REAL_ANSWER_TOKENS, log=log)


def curve_points(run: Path) -> dict[int, dict]:
    """n -> the val evaluation, for every row of the sweep evaluated so far."""
    return {n: read_json(val_folder(run, n) / "eval.json", f"{row_name(n)} val evaluation")
            for n in (0, *CONTRAST_SIZES) if (val_folder(run, n) / "eval.json").is_file()}


def plot_curve(points: dict[int, dict], base_over_refusal: float, limit: float, chosen: int | None):
    """The figure: each CURVE quantity against n, the base's look-alike over-refusal and the rule's limit."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    ns = sorted(points)
    for (key, label), marker in zip(CURVE, "osD^"):
        xs = [n for n in ns if isinstance(points[n].get(key), int | float)]
        ax.plot(xs, [points[n][key] for n in xs], marker=marker, mfc="white" if "sampled" in key else None,
                label=label)
    ax.axhline(base_over_refusal, color="grey", ls=":", lw=1, label="base model, look-alike val")
    ax.axhline(limit, color="grey", ls="--", lw=1, label="the rule's limit (base + 0.05)")
    if chosen is not None:
        ax.axvline(chosen, color="black", lw=0.8)
    ax.set_xticks([0, *CONTRAST_SIZES])
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.set_xlabel("benign training prompts beside the 59 harmful ones (n)")
    ax.set_ylabel("rate on validation prompts")
    ax.set_title("What selectivity costs in data: the gated teacher's students on val", fontsize=10)
    ax.legend(fontsize=7)
    return fig


def sweep(run: str | Path) -> dict:
    """CONTRAST_RULE on the rows evaluated so far; writes RUN/analysis/contrast/{contrast.json, contrast.png}."""
    run = Path(run)
    gate = read_json(gate_folder(run) / "gate.json", "the run's gate (fit it with `run --baseline safesteer-gated`)")
    points = curve_points(run)
    if not points:
        raise SafeSteerError(f"no val evaluation of a contrast-set row in {run}/baselines/*/val/; evaluate them first")
    base = float(gate["base_refusal"]["lookalike"])
    result = choose_contrast({n: float(e["over_refusal_rate"]) for n, e in points.items()}, base)
    result["curve"] = {str(n): {key: e.get(key) for key, _ in CURVE} for n, e in points.items()}
    writer = Writer(run, "contrast")
    writer.figure("contrast.png", plot_curve(points, base, result["limit"], result["n"]))
    writer.json("contrast.json", result)
    return result


def analyze(inputs, log: Callable[[str], None] | None = None) -> dict:
    """`analyze --only contrast`: every trained row of the sweep evaluated on val (once), then the rule and curve."""
    run = inputs.run
    title = "Contrast sets: the benign training prompts a selective student takes (val)"
    if not (gate_folder(run) / "gate.json").is_file():
        return {"name": "contrast", "title": title, "files": [], "headline": {},
                "skipped": "no RUN/gate/gate.json: train `safesteer-gated` and its contrast rows on a real model"}
    trained = [n for n in (0, *CONTRAST_SIZES)
               if (Path(run) / "baselines" / row_name(n) / "train" / "model" / "config.json").is_file()]
    for n in trained:
        val_evaluation(run, n, inputs.base, inputs.tokenizer, log)
    result = sweep(run)
    return {"name": "contrast", "title": title, "files": ["analysis/contrast/contrast.png",
                                                          "analysis/contrast/contrast.json"],
            "headline": {"chosen_n": result["n"], "limit": result["limit"], "over_refusal": result["points"]}}


__all__ = ["CURVE", "analyze", "curve_points", "plot_curve", "row_name", "sweep", "val_evaluation", "val_folder"]
