"""Mean residual-stream activations over a prompt set: the raw material of difference-in-means directions.

For every decoder layer l we read `blocks.{l}.hook_resid_pre` at the last k prompt positions (left padding aligns
them across rows), and average over prompts in float64 so that large batches of fp32/bf16 activations do not
lose precision. The result has shape [pos, layer, d_model], the reference's candidate layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.anatomy import n_layers
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import cache_activations
from safesteer_interp.errors import SafeSteerError


@torch.no_grad()
def mean_resid_pre(model, tokenizer, instructions: Sequence[str], n_positions: int, *, batch_size: int = 32,
                   system: str | None = None) -> Float[Tensor, "pos layer d_model"]:
    """Mean of `resid_pre` at the last `n_positions` prompt tokens, for every layer (float64)."""
    if len(instructions) == 0:
        raise SafeSteerError("cannot average activations over an empty prompt set")
    device = next(model.parameters()).device
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers(model))]
    total = None
    for start in range(0, len(instructions), batch_size):
        batch = encode_prompts(tokenizer, instructions[start:start + batch_size], system).to(device)
        with cache_activations(model, names, positions=slice(-n_positions, None), dtype=torch.float64) as cache:
            model(**batch.inputs(), use_cache=False)
        stacked = torch.stack([cache[name] for name in names])  # [layer, batch, pos, d_model]
        summed = einops.reduce(stacked, "layer batch pos d_model -> pos layer d_model", "sum")
        total = summed if total is None else total + summed
    return total / len(instructions)


def difference_in_means(model, tokenizer, harmful: Sequence[str], harmless: Sequence[str], n_positions: int,
                        **kwargs) -> Float[Tensor, "pos layer d_model"]:
    """Candidate refusal directions: mean(harmful) - mean(harmless) at every (position, layer)."""
    return (mean_resid_pre(model, tokenizer, harmful, n_positions, **kwargs)
            - mean_resid_pre(model, tokenizer, harmless, n_positions, **kwargs))
