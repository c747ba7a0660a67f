"""Why these tokens: for every token of S, how steering raises it, where in the answer, and through which parts.

Δ log-prob by answer position and the votes say *that* steering favours a token; the direct logit attribution
(DLA) of the steering vector and the change of every layer's MLP and every attention head's write, read through
the unembedding, say *how*. The logit lens of the steering effect shows at which depth S tokens emerge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib.pyplot as plt
import torch
from einops import einsum, rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from safesteer_interp.core.anatomy import base_model, decoder_layers, final_norm, unembed
from safesteer_interp.core.hooks import hooks
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.tokens.artifact import read_tokens

from .common import RunInputs, Scored, Writer, as_float, score


# ----------------------------------------------------------------------------------------------- pure tensors
def delta_by_position(teacher: Float[Tensor, "batch pos vocab"], base: Float[Tensor, "batch pos vocab"],
                      mask: Bool[Tensor, "batch pos"], ids: Int[Tensor, " k"],
                      horizon: int) -> Float[Tensor, "k horizon"]:
    """Mean log pi_T(v) - log pi_0(v) of each token of S at answer positions 1..horizon (NaN if no row)."""
    delta = (teacher - base)[:, :horizon][..., ids]  # batch horizon k
    m = mask[:, :horizon, None].float()
    return rearrange((delta * m).sum(0) / m.sum(0), "horizon k -> k horizon")


def unembed_gain(delta_resid: Float[Tensor, "n d_model"], w_u: Float[Tensor, "vocab d_model"],
                 gain: Float[Tensor, " d_model"] | None, rms: Float[Tensor, " n"],
                 ids: Int[Tensor, " k"] | None = None) -> Float[Tensor, "n k"]:
    """Centred logit change of a residual-stream change read through the final norm (linearised at `rms`), for all
    tokens or only `ids` (the centring still uses the whole vocabulary: x · mean_u W_U[u])."""
    x = delta_resid * gain if gain is not None else delta_resid
    x = x / rms[:, None]
    rows = w_u if ids is None else w_u[ids]
    logits = einsum(x, rows, "n d, k d -> n k")
    return logits - (x @ w_u.mean(0))[:, None]  # a shift shared by every token changes no probability


def head_writes(z: Float[Tensor, "n heads_d_head"], w_o: Float[Tensor, "d_model heads_d_head"],
                n_heads: int) -> Float[Tensor, "n heads d_model"]:
    """Split an attention output projection into each head's write to the residual stream."""
    z = rearrange(z, "n (heads d_head) -> n heads d_head", heads=n_heads)
    w = rearrange(w_o, "d_model (heads d_head) -> heads d_head d_model", heads=n_heads)
    return einsum(z, w, "n heads d_head, heads d_head d_model -> n heads d_model")


# ----------------------------------------------------------------------------------------------- model pieces
def final_norm_parts(model) -> tuple[torch.nn.Module, Float[Tensor, " d_model"] | None]:
    norm, gain = final_norm(model)
    if norm is None:
        raise SafeSteerError(f"no final norm found on {type(base_model(model)).__name__}; why-tokens needs it")
    return norm, gain


@contextmanager
def record_components(model, rows: Tensor, cols: Tensor) -> Iterator[dict[str, Tensor]]:
    """Per forward: every head's input to o_proj, every MLP's output, every layer's output, and the RMS of the
    final-norm input, kept only at (rows, cols)."""
    store: dict[str, Tensor] = {}
    handles = []

    layers = decoder_layers(model)
    final = f"resid{len(layers) - 1}"  # the last block's output is what the final norm reads

    def keep(name):
        def fn(x, _kwargs):
            store[name] = x.detach()[rows, cols].float()
            if name == final:
                store["rms"] = store[name].pow(2).mean(-1).sqrt()
        return fn

    names = {f"blocks.{i}.hook_mlp_out": keep(f"mlp{i}") for i in range(len(layers))}
    names |= {f"blocks.{i}.hook_resid_post": keep(f"resid{i}") for i in range(len(layers))}
    for i, layer in enumerate(layers):
        o_proj = getattr(getattr(layer, "self_attn", None), "o_proj", None)
        if o_proj is not None:
            handles.append(o_proj.register_forward_pre_hook(
                lambda _m, args, name=f"z{i}": store.__setitem__(name, args[0].detach()[rows, cols].float())))
    try:
        with hooks(model, names):
            yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def component_attribution(inputs: RunInputs, scored: Scored, horizon: int) -> dict:
    """Direct logit change on S of every MLP and head (steered minus unsteered), at answer positions 1..horizon."""
    model, rollout, ids = inputs.base, scored.rollout, inputs.safety_ids
    n_new = scored.answers.shape[1]
    use = scored.mask.clone()
    use[:, horizon:] = False
    rows, j = use.nonzero(as_tuple=True)
    cols = rollout.prompt_length - 1 + j  # the column whose logits predict answer token j
    feed = dict(**rollout.as_batch().inputs(), use_cache=False, logits_to_keep=n_new + 1)
    runs = {}
    for name, ctx in (("steered", inputs.teacher().active), ("base", None)):
        with record_components(model, rows, cols) as store:
            if ctx is None:
                model(**feed)
            else:
                with ctx():
                    model(**feed)
            runs[name] = dict(store)
    _, gain = final_norm_parts(model)
    w_u = unembed(model).weight.detach().float()
    rms = runs["steered"]["rms"]
    layers = decoder_layers(model)
    config = base_model(model).config
    n_heads = getattr(config, "num_attention_heads", 1)
    direction = inputs.direction
    dla = unembed_gain(direction.coeff * direction.vector.float()[None].expand(len(rms), -1), w_u, gain, rms, ids)
    out = {"steering_vector": dla.mean(0), "mlp": [], "heads": [], "lens": []}
    for i, layer in enumerate(layers):
        d_mlp = runs["steered"][f"mlp{i}"] - runs["base"][f"mlp{i}"]
        out["mlp"].append(unembed_gain(d_mlp, w_u, gain, rms, ids).mean(0))
        if f"z{i}" in runs["base"]:
            w_o = layer.self_attn.o_proj.weight.detach().float()
            d_heads = head_writes(runs["steered"][f"z{i}"] - runs["base"][f"z{i}"], w_o, n_heads)
            per_head = torch.stack([unembed_gain(d_heads[:, h], w_u, gain, rms, ids).mean(0)
                                    for h in range(n_heads)])
            out["heads"].append(per_head)  # heads k
        out["lens"].append(unembed_gain(runs["steered"][f"resid{i}"] - runs["base"][f"resid{i}"], w_u, gain,
                                        rms).mean(0))  # vocab: the logit lens of the steering effect after layer i
    return {"steering_vector": out["steering_vector"], "mlp": torch.stack(out["mlp"]),
            "heads": torch.stack(out["heads"]) if out["heads"] else None, "lens": torch.stack(out["lens"]),
            "logit_change": (scored.teacher - scored.base)[use][:, ids].mean(0), "n_positions": int(use.sum())}


# ----------------------------------------------------------------------------------------------- plots
def plot(names: list[str], delta: Tensor, attribution: dict, lens_s: Tensor, lens_rest: Tensor, show: int = 20):
    k = min(show, len(names))
    fig, axes = plt.subplots(1, 3, figsize=(18, 0.28 * k + 2.5))
    im = axes[0].imshow(delta[:k].numpy(), aspect="auto", cmap="Reds")
    axes[0].set(title="Δ log-prob (teacher − base) by answer position", xlabel="answer position",
                yticks=range(k), yticklabels=names[:k], xticks=range(delta.shape[1]),
                xticklabels=range(1, delta.shape[1] + 1))
    fig.colorbar(im, ax=axes[0], label="nats")
    parts = [attribution["steering_vector"][:k]] + list(attribution["mlp"][:, :k])
    labels = ["vector (DLA)"] + [f"MLP {i}" for i in range(len(attribution["mlp"]))]
    if attribution["heads"] is not None:
        for i, layer in enumerate(attribution["heads"]):
            parts += list(layer[:, :k])
            labels += [f"L{i}H{h}" for h in range(layer.shape[0])]
    grid = torch.stack(parts).T.numpy()
    bound = max(abs(grid).max(), 1e-6)
    im = axes[1].imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    axes[1].set(title="Direct logit change on each S token, by component", xlabel="component",
                yticks=range(k), yticklabels=names[:k], xticks=range(len(labels)))
    axes[1].set_xticklabels(labels, rotation=90, fontsize=7)
    fig.colorbar(im, ax=axes[1], label="centred logit (nats)")
    axes[2].plot(range(len(lens_s)), lens_s.numpy(), "o-", color="tab:red", label="mean over S")
    axes[2].plot(range(len(lens_rest)), lens_rest.numpy(), "o-", color="grey", label="mean over tokens not in S")
    axes[2].set(title="Logit lens of the steering effect", xlabel="after decoder layer",
                ylabel="centred logit change (nats)")
    axes[2].legend()
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------- run
def analyze(inputs: RunInputs, *, samples: int = 2, max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Per-token explanation of S on base-model rollouts to harmful prompts (the student at step 0)."""
    tokens_json = read_tokens(inputs.run)
    horizon = int(tokens_json.get("config", {}).get("horizon", 5))
    scored = score(inputs, inputs.prompts["harmful"], sampler="base", samples=samples,
                   max_new_tokens=max(max_new_tokens, horizon), seed=seed)
    ids = inputs.safety_ids
    names = inputs.token_strings(ids)
    delta = delta_by_position(scored.teacher, scored.base, scored.mask, ids, horizon)
    attribution = component_attribution(inputs, scored, horizon)
    lens = attribution["lens"]
    on_s = torch.zeros(lens.shape[-1], dtype=torch.bool)
    on_s[ids] = True
    lens_s, lens_rest = lens[:, on_s].mean(-1), lens[:, ~on_s].mean(-1)
    by_id = {e["id"]: e for e in tokens_json.get("tokens", [])}
    per_token = []
    for r, (v, name) in enumerate(zip(ids.tolist(), names, strict=True)):
        entry = {"token": name, "id": v, "votes": by_id.get(v, {}).get("votes"),
                 "votes_by_position": by_id.get(v, {}).get("votes_by_position"),
                 "delta_logp_by_position": [as_float(x) for x in delta[r]],
                 "logit_change_total": as_float(attribution["logit_change"][r]),
                 "dla_steering_vector": as_float(attribution["steering_vector"][r]),
                 "mlp": [as_float(x) for x in attribution["mlp"][:, r]]}
        if attribution["heads"] is not None:
            heads = attribution["heads"][:, :, r]
            top = heads.flatten().abs().topk(min(3, heads.numel())).indices
            entry["top_heads"] = [{"layer": int(t // heads.shape[1]), "head": int(t % heads.shape[1]),
                                   "logit": as_float(heads.flatten()[t])} for t in top]
        per_token.append(entry)
    names_all = inputs.token_strings(range(lens.shape[-1]))
    lens_rows = [{"layer": i, "mean_S": as_float(lens_s[i]), "mean_not_S": as_float(lens_rest[i]),
                  "top": [names_all[int(t)] for t in lens[i].topk(10).indices]} for i in range(len(lens))]
    out = Writer(inputs.run, "why_tokens")
    out.figure("why_tokens.png", plot(names, delta, attribution, lens_s, lens_rest))
    best_layer = int(attribution["mlp"].mean(-1).argmax())
    headline = {"positions": attribution["n_positions"],
                "mean_logit_change_S": as_float(attribution["logit_change"].mean()),
                "mean_dla_vector_S": as_float(attribution["steering_vector"].mean()),
                "top_mlp_layer": best_layer, "top_mlp_layer_mean_S": as_float(attribution["mlp"][best_layer].mean()),
                "lens_final_mean_S": as_float(lens_s[-1]), "lens_final_mean_not_S": as_float(lens_rest[-1])}
    result = {"name": "why_tokens", "title": "Why these tokens", "headline": headline, "horizon": horizon,
              "layer": inputs.direction.layer, "tokens": per_token, "logit_lens": lens_rows,
              "note": "direct effects are linearised at the teacher's final-norm RMS and centred over the vocabulary"}
    out.json("why_tokens.json", result)
    return {**result, "files": out.files}


__all__ = ["analyze", "component_attribution", "delta_by_position", "head_writes", "unembed_gain"]
