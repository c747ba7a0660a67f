"""TransformerLens-style hook points on plain HF decoder layers, as context managers.

The residual stream entering decoder layer l is `blocks.{l}.hook_resid_pre`, leaving it `blocks.{l}.hook_resid_post`;
`blocks.{l}.hook_attn_out` / `hook_mlp_out` are the attention and MLP writes. Hooks are plain PyTorch hooks on the
HF modules, so they run inside `model.generate` (KV cache included), under peft, with any attention kernel, and
they are always removed when the `with` block ends, even on error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor, nn

from safesteer_interp.core.anatomy import d_model, decoder_layers, n_layers
from safesteer_interp.errors import SafeSteerError

HOOK_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")
Edit = Callable[[Tensor, dict], Tensor | None]
Positions = Literal["all", "prompt", "last"] | int | Tensor


def hook_names(model: nn.Module, kinds: Sequence[str] = HOOK_KINDS) -> list[str]:
    """Every hook point of the model, in execution order."""
    return [f"blocks.{layer}.hook_{kind}" for layer in range(n_layers(model)) for kind in kinds]


def check_layer(model: nn.Module, layer: int) -> int:
    count = n_layers(model)
    if not isinstance(layer, int) or not 0 <= layer < count:
        raise SafeSteerError(f"layer {layer} is out of range: the model has {count} decoder layers (0..{count - 1})")
    return layer


def check_vector(model: nn.Module, vector: Tensor, what: str = "vector") -> Tensor:
    width = d_model(model)
    if vector.ndim != 1 or vector.shape[0] != width:
        raise SafeSteerError(f"{what} has shape {tuple(vector.shape)} but the model's residual stream has width "
                             f"d_model={width}; pass a 1-D tensor of {width} values")
    if not torch.isfinite(vector).all():
        raise SafeSteerError(f"{what} contains NaN or inf values")
    return vector


def _module_for(model: nn.Module, name: str) -> tuple[nn.Module, bool]:
    """(module, is_pre_hook) for a TransformerLens-style hook name."""
    match = _HOOK_NAME.match(name)
    if match is None:
        raise SafeSteerError(f"unknown hook name '{name}'; expected blocks.<layer>.hook_<{'|'.join(HOOK_KINDS)}>")
    layer, kind = check_layer(model, int(match.group(1))), match.group(2)
    block = decoder_layers(model)[layer]
    if kind == "resid_pre":
        return block, True
    if kind == "resid_post":
        return block, False
    # Gemma-2/3 normalise each sublayer's output before adding it to the stream: the true write is the norm's output.
    post_norms = hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm")
    if kind == "attn_out":
        return (block.post_attention_layernorm if post_norms else block.self_attn), False
    return (block.post_feedforward_layernorm if post_norms else block.mlp), False


# ----------------------------------------------------------------------------------------------- generic hooks
def everywhere(edit: Edit) -> Edit:
    """Mark an edit that treats every position of every forward alike (ablation, addition at "all"): a forward may
    then be split into a shared prefix and its continuation (`generation.prefix_cache`) without changing it."""
    edit.everywhere = True
    return edit


def registered_hooks(model: nn.Module) -> Iterator[Callable]:
    """Every forward hook and pre-hook on the model's modules (ours and anyone else's)."""
    for module in model.modules():
        yield from (*module._forward_hooks.values(), *module._forward_pre_hooks.values())


def hooked(model: nn.Module) -> bool:
    """Whether any forward hook or pre-hook is registered on the model (steering, ablation, recording)."""
    return any(True for _ in registered_hooks(model))


def row_bound_hooks(model: nn.Module) -> bool:
    """Whether a hook on the model keeps a per-row state across the forwards of one generation (a gate read on the
    prompt): decoding must then keep every row in the batch to the end (`generation.generate`)."""
    return any(getattr(hook, "keeps_rows", False) for hook in registered_hooks(model))


def position_dependent_hooks(model: nn.Module) -> bool:
    """Whether a hook on the model may treat positions differently (steering prompt tokens only, recording): any
    forward hook or pre-hook not made from an `everywhere` edit."""
    return any(not getattr(hook, "everywhere", False) for hook in registered_hooks(model))


def _pre_hook(edit: Edit):
    # Decoder layers get hidden states positionally in transformers 5, by keyword in some wrappers.
    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        new = edit(x, kwargs)
        if new is None:
            return None
        if args:
            return (new, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    hook.everywhere = getattr(edit, "everywhere", False)
    hook.keeps_rows = getattr(edit, "keeps_rows", False)
    return hook


def _post_hook(edit: Edit):
    # Attention returns (out, weights); layers and MLPs return a tensor (transformers 5; a tuple in 4.x).
    def hook(module, args, kwargs, output):
        x = output[0] if isinstance(output, tuple) else output
        new = edit(x, kwargs)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new
    hook.everywhere = getattr(edit, "everywhere", False)
    hook.keeps_rows = getattr(edit, "keeps_rows", False)
    return hook


@contextmanager
def hooks(model: nn.Module, edits: dict[str, Edit]) -> Iterator[None]:
    """Attach `fn(activation, layer_kwargs) -> new activation | None` at hook names for the `with` block."""
    handles = []
    try:
        for name, edit in edits.items():
            module, pre = _module_for(model, name)
            if pre:
                handles.append(module.register_forward_pre_hook(_pre_hook(edit), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(_post_hook(edit), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def is_decode_step(layer_kwargs: dict) -> bool:
    """True inside `generate` after the prefill, i.e. when the forward only carries newly generated tokens.

    Prefill and scoring forwards always contain a row whose first position id is 0 (the longest, unpadded row);
    decode steps start every row after its prompt. Layers that get no position ids fall back on the KV cache.
    """
    position_ids = layer_kwargs.get("position_ids")
    if position_ids is not None:
        return bool(position_ids[:, 0].min() > 0)
    cache = layer_kwargs.get("cache", layer_kwargs.get("past_key_values"))
    return cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0


# ----------------------------------------------------------------------------------------------- record
@contextmanager
def cache_activations(model: nn.Module, names: Sequence[str], *, positions: slice | Sequence[int] | None = None,
                      device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                      ) -> Iterator[dict[str, Float[Tensor, "batch pos d_model"]]]:
    """Record activations at hook `names` (optionally only at `positions`) on every forward in the block.

    Each forward overwrites the previous entry, so loop over batches and read the dict after each call.
    With left padding, `positions=slice(-k, None)` is the last k tokens of every row.
    """
    store: dict[str, Tensor] = {}

    def recorder(name: str):
        def record(x: Tensor, _kwargs: dict) -> None:
            kept = x.detach() if positions is None else x.detach()[:, positions]
            store[name] = kept.to(device=device or kept.device, dtype=dtype or kept.dtype)
        return record

    with hooks(model, {name: recorder(name) for name in names}):
        yield store


# ----------------------------------------------------------------------------------------------- edit
class _Cast:
    """A vector cached per (device, dtype): hooks run on every decode step, conversion should not."""

    def __init__(self, vector: Tensor):
        self.vector, self._cache = vector.detach(), {}

    def like(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = self.vector.to(device=x.device, dtype=x.dtype)
        return self._cache[key]


def _position_mask(positions: Positions, x: Tensor, kwargs: dict) -> Tensor | None:
    """A [batch, pos, 1] mask of where to edit (None = everywhere)."""
    if isinstance(positions, str) and positions == "all":
        return None
    decoding = is_decode_step(kwargs)
    if isinstance(positions, str) and positions == "prompt":  # every prompt token, no generated one
        return torch.full((*x.shape[:2], 1), not decoding, dtype=torch.bool, device=x.device)
    if isinstance(positions, Tensor):
        if positions.shape != x.shape[:2]:
            raise SafeSteerError(f"position mask has shape {tuple(positions.shape)} but the forward pass has "
                                 f"[batch, pos] = {tuple(x.shape[:2])}")
        return positions.to(x.device)[..., None]
    k = 1 if positions == "last" else positions
    if not isinstance(k, int) or k < 1:
        raise SafeSteerError(f"positions must be 'all', 'prompt', 'last', a positive int or a bool mask, not "
                             f"{positions!r}")
    mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    if not decoding:  # prompt (prefill) forward: the last k prompt tokens, aligned by left padding
        mask[:, -k:] = True
    return mask[..., None]


@contextmanager
def add_to_resid(model: nn.Module, vector: Float[Tensor, " d_model"], layer: int, coeff: float = 1.0,
                 positions: Positions = "all") -> Iterator[None]:
    """Add `coeff * vector` to the residual stream entering `layer` (activation addition).

    positions: "all" (every token, prompt and generated: the reference's intervention), "prompt" (every prompt
    token, in the prefill; no generated token), "last" (the last prompt token only, in the prefill), an int k (the
    last k prompt tokens, e.g. the post-instruction template), or a bool mask [batch, pos] for plain forward
    passes (a pass over prompt + answer tokens needs one for "prompt", "last" and k).
    """
    check_layer(model, layer)
    with hooks(model, {f"blocks.{layer}.hook_resid_pre": addition(check_vector(model, vector), coeff, positions)}):
        yield


def addition(vector: Float[Tensor, " d_model"], coeff: float = 1.0, positions: Positions = "all") -> Edit:
    """The edit behind `add_to_resid`: x + coeff * vector at `positions`, for composing with other edits."""
    cast = _Cast(vector)

    def add(x: Tensor, kwargs: dict) -> Tensor:
        mask = _position_mask(positions, x, kwargs)
        delta = coeff * cast.like(x)
        return x + delta if mask is None else x + mask * delta

    return everywhere(add) if isinstance(positions, str) and positions == "all" else add


@dataclass(frozen=True)
class RowGate:
    """Which rows a gated addition steers: those whose prompt reads h . unit >= threshold, h being
    `blocks.{layer}.hook_resid_pre` at prompt position `pos` (counted from the prompt's end: -1 is its last token)."""

    layer: int
    unit: Float[Tensor, " d_model"]
    threshold: float
    pos: int = -1


def _gate_columns(x: Tensor, prompt_end: int | Tensor | None, pos: int) -> Tensor:
    """Per row, the column the gate reads: prompt end + pos (a prefill's prompt ends at its last column)."""
    end = x.shape[1] if prompt_end is None else prompt_end
    columns = torch.as_tensor(end, device=x.device).expand(x.shape[0]) + pos
    if bool((columns < 0).any()) or bool((columns >= x.shape[1]).any()):
        raise SafeSteerError(f"the gate reads prompt position {pos} from the prompt's end, outside this forward's "
                             f"{x.shape[1]} columns; pass the prompt length of a teacher-forced pass")
    return columns


@contextmanager
def gated_addition(model: nn.Module, additions: Sequence[tuple[Tensor, int, float, Positions]], gate: RowGate, *,
                   prompt_end: int | Tensor | None = None) -> Iterator[dict[str, Tensor]]:
    """Activation additions (vector, layer, coeff, positions) on the rows whose prompt the gate passes, as CAST does
    (Lee et al., ICLR 2025): a row whose gate stays shut runs exactly as the unedited model.

    The gate is read on every forward that carries the prompt (a prefill, or a teacher-forced pass over prompt +
    answer whose prompts end at column `prompt_end`); decoding steps reuse the prefill's verdict, so the rows must
    stay as they were (`row_bound_hooks`: `generate` keeps them). The gate layer must come at or before every
    addition's layer (it reads the stream before any of them). Yields {"fired": bool [batch], "projection": [batch]}
    of the last prompt forward.
    """
    check_layer(model, gate.layer)
    unit = _Cast(check_vector(model, gate.unit, "gate vector").float())
    late = [layer for _v, layer, _c, _p in additions if check_layer(model, layer) < gate.layer]
    if late:
        raise SafeSteerError(f"the gate reads layer {gate.layer}, after the addition at layer {late[0]}: a gate "
                             "must be read at or before the layers it steers")
    state: dict[str, Tensor] = {}

    def read(x: Tensor, kwargs: dict) -> Tensor:
        if is_decode_step(kwargs):
            return x
        columns = _gate_columns(x, prompt_end, gate.pos)
        h = x[torch.arange(x.shape[0], device=x.device), columns].float()
        state["projection"] = h @ unit.like(h)
        state["fired"] = state["projection"] >= gate.threshold
        return x

    def gated(edit: Edit) -> Edit:
        def steer(x: Tensor, kwargs: dict) -> Tensor:
            fired = state.get("fired")
            if fired is None or fired.shape[0] != x.shape[0]:
                raise SafeSteerError(f"gated steering saw {x.shape[0]} rows after a gate read on "
                                     f"{None if fired is None else fired.shape[0]}: decoding must keep every row")
            return torch.where(fired.to(x.device)[:, None, None], edit(x, kwargs), x)
        return steer

    edits: dict[str, list[Edit]] = {f"blocks.{gate.layer}.hook_resid_pre": [read]}
    for vector, layer, coeff, positions in additions:
        edits.setdefault(f"blocks.{layer}.hook_resid_pre", []).append(
            gated(addition(check_vector(model, vector), coeff, positions)))

    def chain(steps: list[Edit]) -> Edit:  # one hook per layer: the gate read first, then that layer's additions
        def run(x: Tensor, kwargs: dict) -> Tensor:
            for step in steps:
                x = step(x, kwargs)
            return x
        run.keeps_rows = True
        return run

    with hooks(model, {name: chain(steps) for name, steps in edits.items()}):
        yield state


@dataclass(frozen=True)
class RowMap:
    """A steering vector per row, read off its prompt: h @ matrix, h being `blocks.{layer}.hook_resid_pre` at prompt
    position `pos` (from the prompt's end). A matrix that sends benign prompts' h to ~0 steers them by ~nothing
    (AlphaSteer's null-space map, `direction.null_space`)."""

    layer: int
    matrix: Float[Tensor, "d_model d_model"]
    pos: int = -1


@contextmanager
def mapped_addition(model: nn.Module, row_map: RowMap, coeff: float = 1.0, positions: Positions = "all", *,
                    prompt_end: int | Tensor | None = None) -> Iterator[dict[str, Tensor]]:
    """x + coeff * (h @ matrix) at `positions` of `blocks.{layer}.hook_resid_pre`, one vector per row, h read on the
    prompt before the addition (Sheng et al., AlphaSteer, ICLR 2026). As `gated_addition`: read on every forward
    that carries the prompt (`prompt_end` for a teacher-forced pass), reused by decoding steps, rows kept. Yields
    {"vector": [batch, d_model]} of the last prompt forward."""
    check_layer(model, row_map.layer)
    width = d_model(model)
    if tuple(row_map.matrix.shape) != (width, width) or not torch.isfinite(row_map.matrix).all():
        raise SafeSteerError(f"a steering map must be a finite [d_model, d_model] = [{width}, {width}] matrix, not "
                             f"one of shape {tuple(row_map.matrix.shape)}; refit it on this model")
    matrix = _Cast(row_map.matrix.float())
    state: dict[str, Tensor] = {}

    def steer(x: Tensor, kwargs: dict) -> Tensor:
        if not is_decode_step(kwargs):
            columns = _gate_columns(x, prompt_end, row_map.pos)
            h = x[torch.arange(x.shape[0], device=x.device), columns].float()
            state["vector"] = h @ matrix.like(h)
        vector = state.get("vector")
        if vector is None or vector.shape[0] != x.shape[0]:
            raise SafeSteerError(f"mapped steering saw {x.shape[0]} rows after a prompt read on "
                                 f"{None if vector is None else vector.shape[0]}: decoding must keep every row")
        delta = coeff * vector.to(device=x.device, dtype=x.dtype)[:, None, :]
        mask = _position_mask(positions, x, kwargs)
        return x + delta if mask is None else x + mask * delta

    steer.keeps_rows = True
    with hooks(model, {f"blocks.{row_map.layer}.hook_resid_pre": steer}):
        yield state


def project_out(x: Float[Tensor, "... d_model"], unit: Float[Tensor, " d_model"]) -> Float[Tensor, "... d_model"]:
    """x minus its component along the unit vector."""
    return x - (x @ unit)[..., None] * unit


@contextmanager
def ablate_direction(model: nn.Module, direction: Float[Tensor, " d_model"]) -> Iterator[None]:
    """Directional ablation: remove `direction` from every layer input and every attention / MLP write.

    Together these keep the residual stream orthogonal to the direction at every layer and position.
    """
    direction = check_vector(model, direction, "direction")
    norm = direction.double().norm()
    if norm == 0:
        raise SafeSteerError("direction has zero norm; nothing to ablate")
    cast = _Cast((direction.double() / norm).float())

    @everywhere
    def ablate(x: Tensor, _kwargs: dict) -> Tensor:
        return project_out(x, cast.like(x))

    with hooks(model, {name: ablate for name in hook_names(model, ("resid_pre", "attn_out", "mlp_out"))}):
        yield


__all__ = ["HOOK_KINDS", "RowGate", "RowMap", "ablate_direction", "add_to_resid", "addition", "cache_activations",
           "check_layer", "check_vector", "everywhere", "gated_addition", "hook_names", "hooked", "hooks",
           "is_decode_step", "mapped_addition", "position_dependent_hooks", "project_out", "registered_hooks",
           "row_bound_hooks"]
