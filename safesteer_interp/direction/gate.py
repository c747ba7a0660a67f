"""The harm gate: a condition direction (mean harmful minus mean benign `resid_pre` at the steering position, from
train prompts) read at a layer at or before the steering layer; a prompt opens the gate when its residual's
projection on the unit direction reaches a threshold, and only then does a gated teacher steer it. A second kind,
`refusal_gate`, reads stage 1's own direction where it was found: the model's leaning to refuse, not a contrast.

The rule, fixed before any run (`RULE`, also written into gate.json):
Gate layer and threshold are chosen on validation prompts only: harmful (HarmBench val), lookalike (our look-alike
val) and harmless (our harmless val). For every candidate layer and every threshold (each distinct projection
observed in any of the three val sets, and +inf), a set's gate rate is the share of its prompts whose projection is
>= the threshold. A (layer, threshold) is admissible when its lookalike rate is at most the base model's own
substring-judge refusal rate on lookalike val plus the slack, and its harmless rate at most the base's rate on
harmless val plus the slack. Chosen: the admissible one with the highest harmful rate; ties go to the lowest
lookalike rate, then the lowest harmless rate, then the highest threshold, then the lowest layer. When no admissible
threshold opens the gate on a harmful prompt, the gate stays shut (rates 0) and the reason says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.artifacts import read_json, read_tensors, write_json, write_tensors
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import RowGate, cache_activations, check_layer
from safesteer_interp.direction.artifact import AtLayer, Direction
from safesteer_interp.direction.candidates import mean_resid_pre
from safesteer_interp.errors import SafeSteerError

RULE = (
    "Gate layer and threshold are chosen on validation prompts only: harmful (HarmBench val), lookalike (our "
    "look-alike val) and harmless (our harmless val). For every candidate layer and every threshold (each distinct "
    "projection observed in any of the three val sets, and +inf), a set's gate rate is the share of its prompts whose "
    "projection is >= the threshold. A (layer, threshold) is admissible when its lookalike rate is at most the base "
    "model's own substring-judge refusal rate on lookalike val plus the slack, and its harmless rate at most the "
    "base's rate on harmless val plus the slack. Chosen: the admissible one with the highest harmful rate; ties go to "
    "the lowest lookalike rate, then the lowest harmless rate, then the highest threshold, then the lowest layer. "
    "When no admissible threshold opens the gate on a harmful prompt, the gate stays shut (rates 0) and the reason "
    "says so.")
VAL_SETS = ("harmful", "lookalike", "harmless")  # the rule's validation sets, in its order
BENIGN_SETS = ("lookalike", "harmless")  # the sets whose gate rate the base model's refusal rate bounds
# gate.json's provenance keys (Gate.fit)
FIT_KEYS = ("skipped_layers", "slack", "base_refusal", "table", "val_rates", "n", "seconds")
_TOLERANCE = 1e-9  # rates are count / n: a limit of 0.35 + 0.05 (0.39999999999999997) must admit 8 / 20


@dataclass(frozen=True)
class Gate(AtLayer):
    """Which prompts a gated teacher steers: those whose `blocks.{layer}.hook_resid_pre` at prompt position `pos`
    projects on `unit` at or above `threshold` (+inf: none)."""

    vector: Float[Tensor, " d_model"]  # raw condition direction: mean harmful - mean benign train resid_pre
    layer: int  # read at blocks.{layer}.hook_resid_pre, at or before the steering layer
    pos: int  # prompt position from the prompt's end (-1: last prompt token), the steering direction's
    threshold: float  # on the projection onto `unit`
    steer_layer: int  # the steering layer it was chosen for
    rule: str = RULE
    reason: str = ""  # why this layer and threshold, in words (`choose_gate`)
    fit: dict = field(default_factory=dict, compare=False)  # FIT_KEYS: base rates, per-layer table, val rates, ...

    def row_gate(self) -> RowGate:
        return RowGate(self.layer, self.unit, self.threshold, self.pos)


# ----------------------------------------------------------------------------------------------- fit
def _check_pos(pos: int) -> int:
    if not isinstance(pos, int) or pos >= 0:
        raise SafeSteerError(f"gate position {pos!r} must be a negative int counted from the prompt's end (-1: the "
                             "last prompt token), as the direction's pos is")
    return pos


def _unit(vector: Float[Tensor, " d_model"], layer: int) -> Float[Tensor, " d_model"]:
    norm = vector.norm()
    if norm == 0:
        raise SafeSteerError(f"the condition direction at layer {layer} has zero norm: the harmful and benign "
                             "prompts read the same there; use different prompt sets or other layers")
    return vector / norm


def condition_directions(model, tokenizer, harmful: Sequence[str], benign: Sequence[str], pos: int,
                         layers: Sequence[int], batch_size: int = 32) -> dict[int, Float[Tensor, " d_model"]]:
    """Per layer, mean(harmful) - mean(benign) of `resid_pre` at prompt position `pos` (float32, on the CPU)."""
    n = -_check_pos(pos)
    layers = [check_layer(model, layer) for layer in layers]
    # mean_resid_pre reads the last n positions, -n .. -1: index 0 is position -n = pos
    diff = (mean_resid_pre(model, tokenizer, harmful, n, batch_size=batch_size)[0]
            - mean_resid_pre(model, tokenizer, benign, n, batch_size=batch_size)[0])  # [layer, d_model]
    return {layer: diff[layer].float().cpu() for layer in layers}


@torch.no_grad()
def projections(model, tokenizer, prompts: Sequence[str], directions: dict[int, Float[Tensor, " d_model"]],
                pos: int, batch_size: int = 32) -> Float[Tensor, "layer n"]:
    """Each prompt's `resid_pre` at `pos` projected on each layer's unit direction (rows in `directions`' order),
    computed as `gated_addition`'s gate reads it (float32 h @ float32 unit)."""
    if len(prompts) == 0:
        raise SafeSteerError("no prompts to project: the prompt list is empty")
    _check_pos(pos)
    layers = [check_layer(model, layer) for layer in directions]
    units = {layer: _unit(directions[layer].float(), layer) for layer in layers}
    names = {layer: f"blocks.{layer}.hook_resid_pre" for layer in layers}
    device = next(model.parameters()).device
    columns = []
    for start in range(0, len(prompts), batch_size):
        batch = encode_prompts(tokenizer, prompts[start:start + batch_size]).to(device)
        with cache_activations(model, list(names.values()), positions=slice(pos, pos + 1 or None),
                               dtype=torch.float32) as cache:
            model(**batch.inputs(), use_cache=False)
        columns.append(torch.stack([cache[names[layer]][:, 0] @ units[layer].to(device) for layer in layers]))
    return torch.cat(columns, dim=1).cpu()


# ----------------------------------------------------------------------------------------------- choose
def _check_val(val: dict[str, Tensor], layers: Sequence[int], base_refusal: dict[str, float], slack: float) -> None:
    for name in VAL_SETS:
        if name not in val:
            raise SafeSteerError(f"choose_gate needs validation projections for {', '.join(VAL_SETS)}; "
                                 f"'{name}' is missing")
        if val[name].ndim != 2 or val[name].shape[0] != len(layers) or val[name].shape[1] == 0:
            raise SafeSteerError(f"validation projections '{name}' have shape {tuple(val[name].shape)}; expected "
                                 f"[{len(layers)} layers, n > 0 prompts]")
    for name in BENIGN_SETS:
        rate = base_refusal.get(name)
        if not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise SafeSteerError(f"base_refusal['{name}'] must be the base model's refusal rate in [0, 1], "
                                 f"not {rate!r}")
    if not 0 <= slack <= 1:
        raise SafeSteerError(f"slack must be in [0, 1], not {slack}")


def _rates(val: dict[str, Tensor], row: int, threshold: float) -> dict[str, float]:
    return {name: float((val[name][row].double() >= threshold).double().mean()) for name in VAL_SETS}


def _rank(rates: dict[str, float], threshold: float, layer: int) -> tuple:
    """The rule's order as a key to minimise: harmful high, lookalike low, harmless low, threshold high, layer low."""
    return -rates["harmful"], rates["lookalike"], rates["harmless"], -threshold, layer


def _best_at_layer(val: dict[str, Tensor], row: int, layer: int, limits: dict[str, float]) -> dict:
    """The rule's pick at one layer (+inf is always admissible), with its rates and how many thresholds passed."""
    observed = torch.cat([val[name][row] for name in VAL_SETS]).double().unique().tolist()
    admissible = []
    for threshold in [*observed, math.inf]:
        rates = _rates(val, row, threshold)
        if all(rates[name] <= limits[name] + _TOLERANCE for name in BENIGN_SETS):
            admissible.append((_rank(rates, threshold, layer), threshold, rates))
    _key, threshold, rates = min(admissible, key=lambda item: item[0])
    return {"layer": layer, "threshold": threshold, **rates, "admissible_thresholds": len(admissible)}


def choose_gate(val: dict[str, Float[Tensor, "layer n"]], layers: Sequence[int], base_refusal: dict[str, float],
                slack: float = 0.05) -> tuple[int, float, dict]:
    """(layer, threshold, table) by `RULE`; `val[set][i]` holds the projections at `layers[i]`. The table (JSON-ready:
    rates to 4 places, +inf as "inf") has per layer the rule's pick there and its rates, and the `reason` in words."""
    _check_val(val, layers, base_refusal, slack)
    limits = {name: float(base_refusal[name]) + slack for name in BENIGN_SETS}
    picks = [_best_at_layer(val, row, layer, limits) for row, layer in enumerate(layers)]
    best = min(picks, key=lambda p: _rank(p, p["threshold"], p["layer"]))
    rates = ", ".join(f"{name} {best[name]:.3f}" for name in VAL_SETS)
    bounds = ", ".join(f"{name} <= {limits[name]:.3f}" for name in BENIGN_SETS)
    if best["harmful"] > 0:
        reason = f"layer {best['layer']}, threshold {best['threshold']:.4g}: gate rates {rates} within {bounds}"
    else:
        reason = (f"no admissible threshold at layers {list(layers)} opens the gate on a harmful val prompt within "
                  f"{bounds}: the gate stays shut (layer {best['layer']}, threshold +inf, every rate 0)")
    table = {"per_layer": [_jsonable(p) for p in picks], "reason": reason}
    return best["layer"], best["threshold"], table


def _jsonable(pick: dict) -> dict:
    return {k: (round(v, 4) if k in VAL_SETS else _json_float(v) if k == "threshold" else v) for k, v in pick.items()}


def _json_float(value: float) -> float | str:
    """Strict JSON has no infinity: +inf is written as "inf" (float("inf") reads it back)."""
    return value if math.isfinite(value) else "inf"


def _informative(directions: dict[int, Tensor]) -> tuple[dict[int, Tensor], list[int]]:
    """(the directions with a norm above 1e-6 of the largest, the layers left out): a layer where both prompt sets
    read the same (the template token's embedding at layer 0) has no direction to project on."""
    largest = max(float(v.norm()) for v in directions.values())
    kept = {layer: v for layer, v in directions.items() if float(v.norm()) > 1e-6 * largest}
    if not kept:
        raise SafeSteerError(f"the condition directions are zero at every gate layer {list(directions)}: the harmful "
                             "and benign train prompts read the same; use different prompt sets")
    return kept, [layer for layer in directions if layer not in kept]


def fit_gate(model, tokenizer, direction: Direction, *, harmful_train: Sequence[str], benign_train: Sequence[str],
             harmful_val: Sequence[str], lookalike_val: Sequence[str], harmless_val: Sequence[str],
             base_refusal: dict[str, float], layers: Sequence[int] | None = None, slack: float = 0.05,
             batch_size: int = 32, log: Callable[[str], None] = print) -> Gate:
    """Fit condition directions on train prompts at every gate layer (default: 0 .. the steering layer) and the
    direction's position, then choose layer and threshold on validation by `RULE`. Writes nothing."""
    start = time.perf_counter()
    layers = list(range(direction.layer + 1)) if layers is None else list(layers)
    late = [layer for layer in layers if layer > direction.layer]
    if not layers or late:
        raise SafeSteerError(f"gate layers {layers} must be a non-empty list at or before the steering layer "
                             f"{direction.layer}: the gate is read before the stream is steered")
    directions = condition_directions(model, tokenizer, harmful_train, benign_train, direction.pos, layers,
                                      batch_size)
    directions, skipped = _informative(directions)
    if skipped:
        log(f"gate layers {skipped} skipped: harmful and benign train prompts read the same there (e.g. a template "
            "token's embedding at layer 0)")
    layers = list(directions)
    prompts = {"harmful": harmful_val, "lookalike": lookalike_val, "harmless": harmless_val}
    val = {name: projections(model, tokenizer, list(p), directions, direction.pos, batch_size)
           for name, p in prompts.items()}
    layer, threshold, table = choose_gate(val, layers, base_refusal, slack)
    for row in table["per_layer"]:
        log(f"gate layer {row['layer']:>3}: threshold {row['threshold']} -> "
            + ", ".join(f"{name} {row[name]:.3f}" for name in VAL_SETS))
    log(f"gate chosen: {table['reason']}")
    chosen = next(row for row in table["per_layer"] if row["layer"] == layer)
    fit = {"skipped_layers": skipped, "slack": slack,
           "base_refusal": {name: float(base_refusal[name]) for name in BENIGN_SETS}, "table": table["per_layer"],
           "val_rates": {name: chosen[name] for name in VAL_SETS},
           "n": {"harmful_train": len(harmful_train), "benign_train": len(benign_train),
                 **{f"{name}_val": len(p) for name, p in prompts.items()}},
           "seconds": round(time.perf_counter() - start, 2)}
    return Gate(directions[layer], layer, direction.pos, threshold, direction.layer, RULE, table["reason"], fit)


def refusal_gate(model, tokenizer, direction: Direction, *, harmful_val: Sequence[str], lookalike_val: Sequence[str],
                 harmless_val: Sequence[str], base_refusal: dict[str, float], slack: float = 0.05,
                 batch_size: int = 32, log: Callable[[str], None] = print) -> Gate:
    """Stage 1's own direction as the gate, read where it was found (its layer and position): the model's leaning to
    refuse, not a harm-minus-benign contrast of train prompts. Only the threshold is chosen, by `RULE` on val."""
    start = time.perf_counter()
    vectors = {direction.layer: direction.vector.float()}
    prompts = {"harmful": harmful_val, "lookalike": lookalike_val, "harmless": harmless_val}
    val = {name: projections(model, tokenizer, list(p), vectors, direction.pos, batch_size)
           for name, p in prompts.items()}
    layer, threshold, table = choose_gate(val, [direction.layer], base_refusal, slack)
    log(f"refusal gate chosen: {table['reason']}")
    (chosen,) = table["per_layer"]
    fit = {"skipped_layers": [], "slack": slack,
           "base_refusal": {name: float(base_refusal[name]) for name in BENIGN_SETS}, "table": table["per_layer"],
           "val_rates": {name: chosen[name] for name in VAL_SETS},
           "n": {f"{name}_val": len(p) for name, p in prompts.items()},
           "seconds": round(time.perf_counter() - start, 2)}
    return Gate(direction.vector.float(), layer, direction.pos, threshold, direction.layer, RULE, table["reason"], fit)


# ----------------------------------------------------------------------------------------------- artifact
def save_gate(folder: str | Path, gate: Gate, record: dict | None = None) -> dict:
    """Write `folder/gate.safetensors` (the vector) and `folder/gate.json` (the caller's `record`, then where the gate
    reads, its threshold, the rule, the reason and the fit's provenance). Returns gate.json's content."""
    folder = Path(folder)
    write_tensors(folder / "gate.safetensors", {"gate": gate.vector.float()},
                  {"axes": "d_model", "what": "raw condition direction (mean harmful - mean benign train resid_pre) "
                   "at the gate's layer and pos", "where": "gate.json beside this file: layer, pos, threshold"})
    content = {**(record or {}), "layer": gate.layer, "pos": gate.pos, "threshold": _json_float(gate.threshold),
               "hook": gate.hook, "steer_layer": gate.steer_layer, "rule": gate.rule, "reason": gate.reason,
               **gate.fit}
    write_json(folder / "gate.json", content)
    return content


def load_gate(folder: str | Path) -> Gate:
    """Read a gate written by `save_gate`, with a one-line error naming the file when it is missing or malformed."""
    folder = Path(folder)
    tensors, meta_path = folder / "gate.safetensors", folder / "gate.json"
    meta = read_json(meta_path, "harm gate")
    vector = read_tensors(tensors, "harm gate vector").get("gate")
    if vector is None or vector.ndim != 1 or not torch.isfinite(vector).all() or vector.norm() == 0:
        raise SafeSteerError(f"{tensors} holds no finite, non-zero 1-D tensor 'gate'; refit the gate")
    try:
        layer, pos, steer = int(meta["layer"]), int(meta["pos"]), int(meta["steer_layer"])
        threshold, rule, reason = float(meta["threshold"]), str(meta["rule"]), str(meta.get("reason", ""))
    except (KeyError, TypeError, ValueError) as err:
        raise SafeSteerError(f"{meta_path} lacks a valid layer / pos / steer_layer / threshold / rule "
                             f"({type(err).__name__}: {err}); refit the gate") from err
    if pos >= 0 or not 0 <= layer <= steer or math.isnan(threshold):
        raise SafeSteerError(f"{meta_path}: layer {layer}, pos {pos}, steer_layer {steer}, threshold {threshold} "
                             "break 0 <= layer <= steer_layer, pos < 0, threshold a number; refit the gate")
    fit = {key: meta[key] for key in FIT_KEYS if key in meta}
    return Gate(vector, layer, pos, threshold, steer, rule, reason, fit)


__all__ = ["RULE", "VAL_SETS", "Gate", "choose_gate", "condition_directions", "fit_gate", "load_gate",
           "projections", "refusal_gate", "save_gate"]
