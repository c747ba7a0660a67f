"""Steering positions: which tokens tolerate the refusal direction, and which ones it derails.

The reference adds the direction to every token, prompt and generated. On a small model that can flip the decision
and then wreck the answer ("I'm sorry, I I'm I'm"). Here the run's direction (its layer and coefficient) is added to
held-out harmless prompts at several position sets and the answers are judged; the last set adds it everywhere but
removes it again from the final residual stream of generated tokens, which measures how much of the damage is the
vector's own direct path to the unembedding (whose top tokens, the logit lens, are listed too).
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.anatomy import n_layers
from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.hooks import Edit, addition, hooks, is_decode_step, project_out
from safesteer_interp.core.judges import RefusalJudge, starts_with_wording
from safesteer_interp.core.models import is_organism
from safesteer_interp.direction.checks import judged_rates
from safesteer_interp.direction.plots import logit_lens
from safesteer_interp.errors import SafeSteerError

from .common import RunInputs, Writer

POSITION_SETS = {
    "none": "no steering (the base model)",
    "all": "every prompt and generated token (the reference)",
    "prompt": "every prompt token, no generated one",
    "last": "the last prompt token only",
    "generated+last": "every generated token plus the last prompt token (so the decision can flip)",
    "all, direct path removed": "every token, then the direction projected out of the last layer's output on "
                                "generated tokens",
}
# position set -> (where `hooks.addition` adds the vector, whether every generated token gets it as well)
_WHERE = {"none": (None, False), "all": ("all", False), "prompt": ("prompt", False), "last": ("last", False),
          "generated+last": ("last", True), "all, direct path removed": ("all", False)}


def steering_edits(positions: str, vector: Float[Tensor, " d_model"], layer: int, last_layer: int,
                   ) -> dict[str, Edit]:
    """Hook edits that add `vector` at `blocks.{layer}.hook_resid_pre` on one position set (see POSITION_SETS)."""
    if positions not in _WHERE:
        raise SafeSteerError(f"unknown position set {positions!r}; choose from {', '.join(POSITION_SETS)}")
    where, plus_generated = _WHERE[positions]
    shared = addition(vector, 1.0, where) if where else None

    def add(x: Tensor, kwargs: dict) -> Tensor:
        x = shared(x, kwargs)
        return x + vector.to(x) if plus_generated and is_decode_step(kwargs) else x

    edits = {f"blocks.{layer}.hook_resid_pre": add} if shared is not None else {}
    if positions == "all, direct path removed":
        unit = vector / vector.norm()

        def unembed_without(x: Tensor, kwargs: dict) -> Tensor:
            return project_out(x, unit.to(x)) if is_decode_step(kwargs) else x

        edits[f"blocks.{last_layer}.hook_resid_post"] = unembed_without
    return edits


def steered_answers(model, tokenizer, prompts: list[str], positions: str, vector: Float[Tensor, " d_model"],
                    layer: int, max_new_tokens: int) -> list[str]:
    with hooks(model, steering_edits(positions, vector, layer, n_layers(model) - 1)):
        return generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)


def plot(rows: list[dict]):
    names = [r["positions"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = torch.arange(len(rows)).float()
    ax.bar(x - 0.2, [r["refusal"] for r in rows], width=0.4, label="refusal (substring judge)")
    if all("coherent" in r for r in rows):
        ax.bar(x + 0.2, [r["coherent"] for r in rows], width=0.4, label="coherent refusal (exact wording)")
    ax.set_xticks(x.tolist(), names, rotation=15, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="share of harmless prompts", title="Where the refusal direction is added")
    ax.legend(fontsize=8)
    return fig


def analyze(inputs: RunInputs, *, max_new_tokens: int = 24, **_) -> dict:
    d = inputs.direction
    vector = d.coeff * d.vector
    prompts = inputs.prompts["harmless"]
    judge = RefusalJudge()
    coherent: Callable[[str], bool] | None = starts_with_wording if is_organism(inputs.model_spec) else None
    rows = []
    for positions, meaning in POSITION_SETS.items():
        answers = steered_answers(inputs.base, inputs.tokenizer, prompts, positions, vector, d.layer, max_new_tokens)
        rows.append({"positions": positions, "meaning": meaning, **judged_rates(answers, judge, coherent),
                     "examples": answers[:3]})
    lens = logit_lens(inputs.base, inputs.tokenizer, d.vector, k=10)
    key = "coherent" if coherent is not None else "refusal"
    by_name = {r["positions"]: r for r in rows}
    headline = {f"{key}_{name}": by_name[name][key] for name in ("all", "prompt", "last", "generated+last",
                                                                 "all, direct path removed")}
    headline["logit_lens_top"] = [t["token"] for t in lens["top"][:5]]
    out = Writer(inputs.run, "steering_positions")
    out.figure("steering_positions.png", plot(rows))
    result = {"name": "steering_positions", "title": "Steering positions (where the direction derails answers)",
              "headline": headline, "direction": {"layer": d.layer, "pos": d.pos, "coeff": d.coeff,
                                                  "teacher_positions": d.positions},
              "prompts": f"{len(prompts)} held-out harmless prompts, greedy, {max_new_tokens} new tokens",
              "judged_by": key, "rates": "per row, shares of the prompts (0-1): 'refusal' judged a refusal by the "
                                         "substring judge, 'coherent' (organism only) starting with one of its "
                                         "refusal wordings", "rows": rows,
              "logit_lens": {**lens, "of": "W_U applied to the final-norm-scaled unit direction (logits)"}}
    out.json("steering_positions.json", result)
    return {**result, "files": out.files}


__all__ = ["POSITION_SETS", "analyze", "steered_answers", "steering_edits"]
