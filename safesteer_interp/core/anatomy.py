"""Model anatomy: where a HF causal LM keeps its decoder layers, its final norm and its unembedding.

Architectures name these differently (`model.layers`, `transformer.h`, `gpt_neox.layers`, ...); this is the one
module that knows the names, so hooks, the logit lens and direct logit attribution all find the same modules.
peft wrappers are unwrapped first: hooks then sit on the shared modules and both views of the model see them.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from safesteer_interp.errors import SafeSteerError

LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h",
               "gpt_neox.layers", "model.decoder.layers")
FINAL_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                    "model.decoder.final_layer_norm")


def base_model(model: nn.Module) -> nn.Module:
    """The plain HF model under a peft wrapper (the same object for a plain model)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _lookup(root: nn.Module, path: str):
    for attr in path.split("."):
        root = getattr(root, attr, None)
        if root is None:
            return None
    return root


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, found generically across architectures."""
    root = base_model(model)
    for path in LAYER_PATHS:
        found = _lookup(root, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    raise SafeSteerError(f"unsupported architecture '{type(root).__name__}': no decoder layers found at "
                         f"{', '.join(LAYER_PATHS)}")


def n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def d_model(model: nn.Module) -> int:
    config = base_model(model).config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size


def final_norm(model: nn.Module) -> tuple[nn.Module | None, Float[Tensor, " d_model"] | None]:
    """(final norm module, its effective elementwise gain), or (None, None) for an architecture we do not know.

    Gemma-style RMSNorms multiply by (1 + weight); every other norm here multiplies by weight. The residual stream
    it reads is `blocks.{n_layers - 1}.hook_resid_post`.
    """
    root = base_model(model)
    for path in FINAL_NORM_PATHS:
        norm = _lookup(root, path)
        if isinstance(norm, nn.Module):
            weight = getattr(norm, "weight", None)
            if weight is None:
                return norm, None
            gain = weight.detach().float()
            return norm, (1 + gain) if "gemma" in type(norm).__name__.lower() else gain
    return None, None


def unembed(model: nn.Module) -> nn.Module:
    """The output head W_U (`lm_head` in most architectures)."""
    return base_model(model).get_output_embeddings()


def vocab_size(model: nn.Module) -> int:
    """Rows of W_U: the ids a logit exists for (may exceed the tokenizer's length, e.g. Qwen's padded rows)."""
    return unembed(model).weight.shape[0]


@torch.no_grad()
def unembed_direction(model: nn.Module, direction: Float[Tensor, " d_model"]) -> Float[Tensor, " vocab"]:
    """W_U (final_norm(unit(direction))): the logits a unit step along the direction would write at the output.

    The final norm applied to a unit vector is the gain-scaled direction up to a constant (also right for
    Gemma's 1 + w), so this ranks tokens the way adding the direction just before the norm would move them.
    """
    head = unembed(model)
    unit = (direction / direction.norm()).to(head.weight)
    norm, _ = final_norm(model)
    scaled = norm(unit[None])[0] if norm is not None else unit
    return head(scaled).float().cpu()


__all__ = ["FINAL_NORM_PATHS", "LAYER_PATHS", "base_model", "d_model", "decoder_layers", "final_norm", "n_layers",
           "unembed", "unembed_direction", "vocab_size"]
