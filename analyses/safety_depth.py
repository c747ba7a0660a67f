"""How deep training reaches: KL(model ‖ base) at every answer position, on plain and on prefilled harmful prompts.

Alignment that lives in the first answer tokens is shallow (Qi et al. 2024): after a few prefilled compliant tokens
the model is back on its base behaviour. Teacher-forcing the base model's own greedy answer (after 0, 5, 10 and 20
prefilled tokens) through each trained model shows where training moved the next-token distribution, and the mass
on S at the first token the model writes itself says whether the refusal tokens still rise after a prefill.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.chat import encode_texts, render_prompts
from safesteer_interp.core.generation import Generation, decode_answers, generate
from safesteer_interp.core.judges import CoherentRefusalJudge
from safesteer_interp.core.models import load_model
from safesteer_interp.core.scoring import answer_logprobs
from safesteer_interp.evaluate.prefill import prefill_rows, prefilled_texts

from .common import RunInputs, Writer, as_float
from .sparsity import per_position, set_mass, split_kl

DEPTHS = (0, 5, 10, 20)  # prefilled answer tokens (0: the plain request)
EARLY = 5  # "the first few answer tokens": the span the published loss and the safety tokens concentrate on


# ----------------------------------------------------------------------------------------------- pure tensors
def depth_numbers(model: Float[Tensor, "batch pos vocab"], base: Float[Tensor, "batch pos vocab"],
                  mask: Bool[Tensor, "batch pos"], ids: Int[Tensor, " k"], early: int = EARLY) -> dict:
    """KL(model ‖ base) per position (full vocabulary and its part over S), its mean over the first `early`
    positions and over the rest (each token weighs the same), and the S mass of both at the first position."""
    full, on_set = split_kl(model, base, ids)
    m = mask.float()
    head, tail = m.clone(), m.clone()
    head[:, early:], tail[:, :early] = 0, 0

    def mean(values: Tensor, weights: Tensor) -> float | None:
        return as_float((values * weights).sum() / weights.sum()) if float(weights.sum()) else None

    return {"kl_by_position": per_position(full, mask), "kl_S_by_position": per_position(on_set, mask),
            "kl_early": mean(full, head), "kl_late": mean(full, tail), "kl_S_early": mean(on_set, head),
            "S_mass_first": as_float(set_mass(model[:, :1], ids).mean()),
            "S_mass_first_base": as_float(set_mass(base[:, :1], ids).mean()), "rows": int(mask.shape[0])}


# ----------------------------------------------------------------------------------------------- trajectories
@torch.no_grad()
def base_trajectories(inputs: RunInputs, prompts: Sequence[str], depths: Sequence[int],
                      max_new_tokens: int) -> dict[int, tuple[Generation, list[dict]]]:
    """depth -> (the base model's greedy continuation after the prefill, the prefill rows as `attacks` writes
    them). The prefill is the base's own plain answer where it complied, else the fixed affirmative opener."""
    tok = inputs.tokenizer
    plain = generate(inputs.base, tok, encode_texts(tok, render_prompts(tok, prompts)), max_new_tokens=max_new_tokens)
    judge = CoherentRefusalJudge()
    answers = {p: {"answer": a, "refused_strict": judge.is_refusal(a)}
               for p, a in zip(prompts, decode_answers(tok, plain), strict=True)}
    out = {0: (plain, [{"attack": "plain", "prompt": p, "prefill": "", "base_refused": answers[p]["refused_strict"]}
                       for p in prompts])}
    for k in (d for d in depths if d > 0):
        rows = prefill_rows([{"prompt": p} for p in prompts], answers, tok, depths=[k])
        batch = encode_texts(tok, prefilled_texts(tok, rows))
        out[k] = (generate(inputs.base, tok, batch, max_new_tokens=max_new_tokens), rows)
    return out


def trained_models(inputs: RunInputs) -> Iterator[tuple[str, object, object]]:
    """(name, model, scoring context) for the teacher, SafeSteer's student and each baseline of the run, one loaded
    at a time (a 0.5B model is 2 GB in float32)."""
    teacher = inputs.teacher()
    yield "teacher", inputs.base, teacher
    if inputs.student is not None:
        yield "safesteer", inputs.student, None
    for folder in sorted(Path(inputs.run).glob("baselines/*/train/model")):
        if (folder / "config.json").is_file():
            model = load_model(str(folder))[0]
            yield folder.parent.parent.name, model, None
            del model


@torch.no_grad()
def score_depths(inputs: RunInputs, trajectories: dict[int, tuple[Generation, list[dict]]]) -> dict[str, dict]:
    """model -> depth -> `depth_numbers` on the base's trajectory at that depth."""
    base = {k: answer_logprobs(inputs.base, g) for k, (g, _rows) in trajectories.items()}
    result: dict[str, dict] = {}
    for name, model, teacher in trained_models(inputs):
        result[name] = {}
        for k, (gen, _rows) in trajectories.items():
            if teacher is None:
                logp = answer_logprobs(model, gen)
            else:  # the teacher steers the prompt (and the prefill, which is part of its prompt here) as in training
                with teacher.active(teacher.scoring_positions(gen.sequences, gen.prompt_length)):
                    logp = answer_logprobs(model, gen)
            result[name][str(k)] = depth_numbers(logp, base[k], gen.answer_mask, inputs.safety_ids)
    return result


# ----------------------------------------------------------------------------------------------- plot
SMOOTH = 5  # answer positions in the centred rolling mean of the KL panels


def rolling_mean(values: Sequence[float | None], window: int = SMOOTH) -> list[float]:
    """Centred rolling mean over `window` positions (shrinking at the ends), skipping None and NaN; NaN where a
    window holds no value. Per-position KL over a few dozen prompts is too noisy to follow unsmoothed."""
    clean = [float("nan") if v is None else float(v) for v in values]
    half = window // 2
    out = []
    for i in range(len(clean)):
        seen = [v for v in clean[max(0, i - half):i + half + 1] if v == v]  # v == v: not NaN
        out.append(sum(seen) / len(seen) if seen else float("nan"))
    return out


def plot(numbers: dict[str, dict], depths: Sequence[int], shown: int):
    """Small multiples: one KL(model ‖ base) panel per model (plain solid, after the `shown`-token prefill dashed,
    shared log y axis), then the S mass at the first own token against prefill depth for every model and the base."""
    names = list(numbers)
    columns = min(3, len(names) + 1)
    rows = -(-(len(names) + 1) // columns)  # ceil
    fig, grid = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.2 * rows), squeeze=False, layout="constrained")
    cells = list(grid.flat)
    for ax in cells[len(names) + 1:]:
        fig.delaxes(ax)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: colours[i % len(colours)] for i, name in enumerate(names)}
    kl_axes, mass_ax = cells[:len(names)], cells[len(names)]
    for i, (ax, name) in enumerate(zip(kl_axes, names, strict=True)):
        if ax is not kl_axes[0]:
            ax.sharex(kl_axes[0])
            ax.sharey(kl_axes[0])
        ax.axvspan(0.5, EARLY + 0.5, color="0.92", lw=0)  # the first EARLY answer positions
        for k, style in ((0, "-"), (shown, "--")):
            if str(k) not in numbers[name]:
                continue
            smooth = rolling_mean(numbers[name][str(k)]["kl_by_position"])
            ax.plot(range(1, len(smooth) + 1), smooth, style, color=colour[name], lw=1.6,
                    label="plain" if k == 0 else f"after a {k}-token prefill")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=11, loc="left", color=colour[name], fontweight="bold")
        ax.set_xlabel("answer position (after the prefill)", fontsize=8)
        if i % columns == 0:  # the y axis is shared: label it once a row
            ax.set_ylabel(f"KL(model ‖ base), nats\n{SMOOTH}-position centred mean", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=8)
    if kl_axes:
        kl_axes[0].legend(fontsize=8, loc="best", title=f"shaded: first {EARLY} positions", title_fontsize=7)
    for name in names:
        mass_ax.plot(list(depths), [numbers[name][str(k)]["S_mass_first"] for k in depths], "o-",
                     color=colour[name], label=name)
    if names:
        first = numbers[names[0]]
        mass_ax.plot(list(depths), [first[str(k)]["S_mass_first_base"] for k in depths], "o:", color="black",
                     label="base")
    mass_ax.set_xticks(list(depths))
    mass_ax.minorticks_off()
    mass_ax.set_title("mass on S at the first own token", fontsize=11, loc="left", fontweight="bold")
    mass_ax.set_xlabel("prefilled answer tokens", fontsize=8)
    mass_ax.set_ylabel("mass on S", fontsize=8)
    mass_ax.grid(True, alpha=0.3)
    mass_ax.tick_params(labelsize=8)
    mass_ax.legend(fontsize=7, ncols=1 if len(names) < 5 else 2)  # base + up to 4 models in one column
    fig.suptitle("Where each model differs from its base, on the base's own answer,\n"
                 "and do the safety tokens still rise after a prefill?", fontsize=11)
    return fig


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, depths: Sequence[int] = DEPTHS, max_new_tokens: int = 64) -> dict:
    """KL by position and S mass at each prefill depth for every trained model; RUN/analysis/safety_depth/."""
    prompts = inputs.prompts["harmful"]
    trajectories = base_trajectories(inputs, prompts, depths, max_new_tokens)
    numbers = score_depths(inputs, trajectories)
    shown = 10 if 10 in depths else max(depths)
    out = Writer(inputs.run, "safety_depth")
    out.figure("safety_depth.png", plot(numbers, depths, shown))
    headline = {}
    for name, by_depth in numbers.items():
        headline |= {f"{name}_kl_early_plain": by_depth["0"]["kl_early"],
                     f"{name}_kl_late_plain": by_depth["0"]["kl_late"],
                     f"{name}_kl_early_prefill{shown}": by_depth[str(shown)]["kl_early"],
                     f"{name}_S_mass_plain": by_depth["0"]["S_mass_first"],
                     f"{name}_S_mass_prefill{shown}": by_depth[str(shown)]["S_mass_first"]}
    if numbers:
        first = next(iter(numbers.values()))
        headline |= {"base_S_mass_plain": first["0"]["S_mass_first_base"],
                     f"base_S_mass_prefill{shown}": first[str(shown)]["S_mass_first_base"]}
    tok = inputs.tokenizer
    examples = {str(k): [{**row, "base_continuation": text} for row, text in
                         zip(rows, decode_answers(tok, gen), strict=True)] for k, (gen, rows) in trajectories.items()}
    result = {"name": "safety_depth", "title": "How deep the change goes (plain and prefilled)",
              "headline": headline, "early": EARLY, "depths": list(depths), "max_new_tokens": max_new_tokens,
              "reading": "KL(model ‖ base) on the base model's greedy answer; position 1 is the first token after "
                         "the prefill; S mass at that first position",
              "models": numbers, "trajectories": examples}
    out.json("safety_depth.json", result)
    return {**result, "files": out.files}


__all__ = ["DEPTHS", "EARLY", "analyze", "base_trajectories", "depth_numbers", "score_depths", "trained_models"]
