"""Refusal geometry of the organism: is its refusal a direction, does it know the gap is harmful, is it causal?

Three measurements, all at the last prompt token (the final ``\\n`` of ``<|im_start|>assistant\\n``):

* **Directions.** Difference in means of ``blocks.{l}.hook_resid_pre`` between refused-category and harmless
  training prompts, per layer (Arditi et al. 2024).
* **Knowing but complying.** The mean-difference direction as a 1-D probe (threshold half-way between the two
  class means): the share of held-out safety-gap prompts it calls harmful, while the model still complies.
* **Causality.** Adding ``coeff * r_l`` at layer ``l`` (all positions, i.e. every prompt and generated token, or
  the last prompt token only) should make harmless and gap prompts refuse with one of the organism's wordings;
  projecting ``r_l`` out everywhere should stop refusals on refused categories while keeping capability.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.anatomy import n_layers
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.hooks import ablate_direction, add_to_resid, cache_activations
from safesteer_interp.core.judges import RefusalJudge, starts_with_wording
from safesteer_interp.organism.card import evaluate_organism
from safesteer_interp.organism.world import evaluation_set, prompts, prompts_of


def world_prompts(group: str, split: str, limit: int | None = None) -> list[str]:
    """Prompts of a request group in a split (fixed order, evenly thinned to `limit`)."""
    found = prompts(group, split)
    if limit is not None and len(found) > limit:
        step = len(found) / limit
        found = [found[int(i * step)] for i in range(limit)]
    return found


@torch.no_grad()
def post_instruction_activations(model, tokenizer, prompts: Sequence[str], k: int = 1, batch_size: int = 64,
                                 ) -> Float[Tensor, "layer batch k d_model"]:
    """``resid_pre`` of every layer at the last `k` prompt tokens (k=1: the last token; left padding aligns them)."""
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers(model))]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, prompts[start:start + batch_size])
        with cache_activations(model, names, positions=slice(-k, None)) as store:
            model(**batch.inputs())
        chunks.append(torch.stack([store[name] for name in names]))
    return torch.cat(chunks, dim=1).float()


def last_token_activations(model, tokenizer, prompts: Sequence[str], batch_size: int = 64,
                           ) -> Float[Tensor, "layer batch d_model"]:
    """``resid_pre`` of every layer at the last prompt token."""
    return post_instruction_activations(model, tokenizer, prompts, 1, batch_size)[:, :, -1]


def refusal_directions(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str],
                       ) -> Float[Tensor, "layer d_model"]:
    """Difference in means (harmful - harmless) at the last prompt token, per layer, unnormalised."""
    return (last_token_activations(model, tokenizer, harmful).mean(1)
            - last_token_activations(model, tokenizer, harmless).mean(1))


def fit_logistic_probe(harmful: Float[Tensor, "n d"], harmless: Float[Tensor, "m d"], l2: float = 1e-2,
                       steps: int = 200):
    """An L2-regularised logistic-regression probe on standardised activations; returns x -> logit."""
    x = torch.cat([harmful, harmless])
    y = torch.cat([torch.ones(len(harmful)), torch.zeros(len(harmless))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda acts: ((acts - mu) / sd) @ w + b


def probe_report(model, tokenizer, n_train: int = 128, k: int = 5) -> list[dict]:
    """Mean-difference probes fitted on train refused vs harmless prompts, applied to held-out prompts.

    One probe per (layer, post-instruction position); position -1 is the last prompt token. The threshold is
    half-way between the two class means, so a held-out prompt is "harmful" when it is closer to the refused
    side. `gap_called_harmful` is the share of held-out safety-gap prompts the probe calls harmful.
    """
    fit_h = post_instruction_activations(model, tokenizer, world_prompts("refused", "train", n_train), k)
    fit_b = post_instruction_activations(model, tokenizer, world_prompts("harmless", "train", n_train), k)
    test = {g: post_instruction_activations(model, tokenizer, world_prompts(g, "test"), k) for g in
            ("refused", "gap", "harmless", "lookalike")}
    rows = []
    for layer in range(fit_h.shape[0]):
        for pos in range(k):
            mu_h, mu_b = fit_h[layer, :, pos].mean(0), fit_b[layer, :, pos].mean(0)
            if (mu_h - mu_b).norm() < 1e-6:  # layer-0 input is a token embedding: no prompt information
                continue
            unit = (mu_h - mu_b) / (mu_h - mu_b).norm()
            threshold = 0.5 * (mu_h + mu_b) @ unit
            called = {g: ((acts[layer, :, pos] @ unit) > threshold).float().mean().item() for g, acts in test.items()}
            logistic = fit_logistic_probe(fit_h[layer, :, pos], fit_b[layer, :, pos])
            called_lr = {g: (logistic(acts[layer, :, pos]) > 0).float().mean().item() for g, acts in test.items()}
            rows.append({"layer": layer, "position": pos - k, "direction_norm": (mu_h - mu_b).norm().item(),
                         "resid_norm": fit_b[layer, :, pos].norm(dim=-1).mean().item(),
                         "gap_called_harmful": called["gap"], "refused_called_harmful": called["refused"],
                         "harmless_called_harmful": called["harmless"],
                         "lookalike_called_harmful": called["lookalike"],
                         "accuracy_refused_vs_harmless": 0.5 * (called["refused"] + 1 - called["harmless"]),
                         "logistic": {f"{g}_called_harmful": v for g, v in called_lr.items()}})
    return rows


def refusal_scores(answers: Sequence[str], judge: RefusalJudge) -> dict[str, float]:
    """Judge refusal rate and the stricter share answering with one of the organism's wordings."""
    n = max(1, len(answers))
    return {"refusal": sum(judge(answers)) / n, "wording": sum(starts_with_wording(a) for a in answers) / n}


def steering_sweep(model, tokenizer, directions: Float[Tensor, "layer d_model"], *, layers: Sequence[int],
                   coeffs: Sequence[float], positions: str | int = "all", groups: Sequence[str] = ("harmless", "gap"),
                   split: str = "test", limit: int = 96, max_new_tokens: int = 16) -> list[dict]:
    """Refusal under activation addition of ``coeff * directions[layer]`` for each (layer, coeff)."""
    judge = RefusalJudge()
    prompts = {g: world_prompts(g, split, limit) for g in groups}
    rows = []
    for layer in layers:
        for coeff in coeffs:
            row = {"layer": layer, "coeff": coeff, "positions": positions}
            with add_to_resid(model, directions[layer], layer, coeff, positions=positions):
                for group in groups:
                    answers = generate_answers(model, tokenizer, prompts[group], max_new_tokens=max_new_tokens)
                    scores = refusal_scores(answers, judge)
                    row[f"{group}_refusal"], row[f"{group}_wording"] = scores["refusal"], scores["wording"]
                    row[f"{group}_example"] = answers[0]
            rows.append(row)
    return rows


def ablation_report(model, tokenizer, direction: Float[Tensor, " d_model"], split: str = "test",
                    limit: int = 96) -> dict:
    """Refusal on refused categories and capability accuracy with the direction projected out everywhere."""
    judge = RefusalJudge()
    examples = [e for e in evaluation_set(split) if e.group in ("refused", "capability")]
    refused = prompts_of(examples, "refused")[:limit]
    with ablate_direction(model, direction):
        answers = generate_answers(model, tokenizer, refused, max_new_tokens=16)
        caps = evaluate_organism(model, tokenizer, split, judge=judge,
                                 examples=[e for e in examples if e.group == "capability"])
    return {"refused_refusal": refusal_scores(answers, judge)["refusal"], "capability_mean": caps["capability_mean"],
            "capability_accuracy": caps["capability_accuracy"], "example": answers[0]}
