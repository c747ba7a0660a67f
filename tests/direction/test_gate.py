"""The harm gate on tiny random models: condition directions, projections equal to the gate's own reading, the
validation rule on hand-made projections, and the artifact."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PROMPTS, one_line_error

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import gated_addition
from safesteer_interp.direction import gate as gate_module
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.direction.gate import (
    RULE,
    Gate,
    choose_gate,
    condition_directions,
    fit_gate,
    load_gate,
    projections,
    save_gate,
)

HARMFUL = ["how do i make a bomb ?", "tell me how to hack a weapon", "how can i steal bread ?", "write code to hack"]
BENIGN = ["how do i make bread ?", "tell me how to water a plant", "how can i help the garden ?", "list ten"]
LOOKALIKE = ["how do i hack a cake ?", "write a bomb of a list", "steal the garden"]
HARMLESS = ["describe the ocean", "hello", "what is two plus three ?"]
NO_BASE = {"lookalike": 0.0, "harmless": 0.0}


def val_sets(harmful, lookalike, harmless) -> dict[str, torch.Tensor]:
    """Hand-made projections: one list of rows (one row per layer) per validation set."""
    return {name: torch.tensor(rows, dtype=torch.float32)
            for name, rows in (("harmful", harmful), ("lookalike", lookalike), ("harmless", harmless))}


@pytest.mark.parametrize("pos", [-1, -2])
def test_condition_directions_are_the_mean_difference_at_pos(qwen2, pos):
    model, tok = qwen2

    def mean_at(prompts, layer):  # one unpadded prompt per forward; HF's hidden_states[l] is layer l's input
        rows = []
        for prompt in prompts:
            with torch.no_grad():
                states = model(**encode_prompts(tok, [prompt]).inputs(), output_hidden_states=True).hidden_states
            rows.append(states[layer][0, pos].double())
        return torch.stack(rows).mean(0)

    got = condition_directions(model, tok, HARMFUL, BENIGN, pos, [1, 2], batch_size=3)  # padded batches of 3 and 1
    assert list(got) == [1, 2] and all(v.dtype == torch.float32 for v in got.values())
    for layer in (1, 2):
        want = mean_at(HARMFUL, layer) - mean_at(BENIGN, layer)
        assert want.norm() > 0.1
        assert torch.allclose(got[layer].double(), want, atol=1e-5)
    with pytest.raises(SafeSteerError, match="negative int"):
        condition_directions(model, tok, HARMFUL, BENIGN, 0, [1])


@pytest.mark.parametrize("pos", [-1, -2])
def test_projections_are_what_the_gate_reads_in_a_left_padded_batch(qwen2, pos):
    model, tok = qwen2
    directions = condition_directions(model, tok, HARMFUL, BENIGN, pos, [1, 2])
    batch = encode_prompts(tok, PROMPTS)
    assert (batch.attention_mask == 0).any()  # prompts of different lengths: left padding in the batch
    ours = projections(model, tok, PROMPTS, directions, pos, batch_size=len(PROMPTS))
    assert ours.shape == (2, len(PROMPTS)) and ours.dtype == torch.float32
    assert torch.allclose(ours, projections(model, tok, PROMPTS, directions, pos, batch_size=1), atol=1e-5)
    steer = torch.randn(model.config.hidden_size)
    for row, layer in enumerate(directions):
        threshold = float(ours[row].median())
        gate = Gate(directions[layer], layer, pos, threshold, steer_layer=2)
        with torch.no_grad(), gated_addition(model, [(steer, 2, 0.0, "all")], gate.row_gate()) as state:
            model(**batch.inputs(), use_cache=False)
        assert torch.allclose(state["projection"], ours[row], atol=1e-6, rtol=0)
        assert torch.equal(state["fired"], ours[row] >= threshold) and 0 < int(state["fired"].sum()) < len(PROMPTS)


def test_choose_gate_takes_a_higher_threshold_when_the_best_harmful_rate_over_refuses_lookalikes():
    val = val_sets([[1.0, 2.0, 3.0, 4.0]], [[0.5, 2.5, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]])
    # threshold 1 opens every harmful prompt but half the look-alikes; above 2.5 none: 3 opens half the harmful ones
    layer, threshold, table = choose_gate(val, [5], NO_BASE)
    assert (layer, threshold) == (5, 3.0)
    assert table["per_layer"] == [{"layer": 5, "threshold": 3.0, "harmful": 0.5, "lookalike": 0.0, "harmless": 0.0,
                                   "admissible_thresholds": 3}]  # 3, 4 and +inf
    assert "layer 5, threshold 3" in table["reason"]
    # the base refuses a quarter of the look-alikes: one of four (2.5) is within 0.25 + 0.05, so threshold 1 opens
    # every harmful prompt; 0.5 would open two look-alikes
    layer, threshold, table = choose_gate(val, [5], {"lookalike": 0.25, "harmless": 0.0})
    assert threshold == 1.0 and table["per_layer"][0]["harmful"] == 1.0 and table["per_layer"][0]["lookalike"] == 0.25
    # a rate exactly at base + slack is admissible: 0.35 + 0.05 is 0.39999999999999997 in floats, 8 / 20 is 0.4
    val = val_sets([[1.0] * 20], [[1.0] * 8 + [0.0] * 12], [[0.0] * 20])
    assert choose_gate(val, [0], {"lookalike": 0.35, "harmless": 0.0})[1] == 1.0
    assert choose_gate(val, [0], {"lookalike": 0.34, "harmless": 0.0})[1] == math.inf


def test_choose_gate_tie_breaks_lookalike_then_harmless_then_threshold_then_layer():
    harmful = [2.0, 3.0]
    # same harmful rate at both layers; layer 1 opens fewer look-alikes (base 0.5 allows one of two)
    val = val_sets([harmful, harmful], [[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])
    assert choose_gate(val, [0, 1], {"lookalike": 0.5, "harmless": 0.5})[:2] == (1, 2.0)
    # same harmful and look-alike rates; layer 1 opens fewer harmless prompts
    val = val_sets([harmful, harmful], [[0.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]])
    assert choose_gate(val, [0, 1], {"lookalike": 0.5, "harmless": 0.5})[:2] == (1, 2.0)
    # the same rates at both layers: the higher threshold (layer 1's projections are twice layer 0's)
    val = val_sets([harmful, [4.0, 6.0]], [[0.0, 1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]])
    layer, threshold, table = choose_gate(val, [0, 1], NO_BASE)
    assert (layer, threshold) == (1, 4.0)
    assert [row["harmful"] for row in table["per_layer"]] == [1.0, 1.0]
    # identical projections at both layers: the lower layer
    val = val_sets([harmful, harmful], [[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]])
    assert choose_gate(val, [3, 7], NO_BASE)[:2] == (3, 2.0)


def test_choose_gate_stays_shut_when_nothing_but_infinity_is_admissible():
    val = val_sets([[1.0, 2.0], [5.0, 6.0]], [[1.0, 2.0], [5.0, 6.0]], [[0.0, 0.0], [0.0, 0.0]])
    layer, threshold, table = choose_gate(val, [0, 1], NO_BASE)
    assert (layer, threshold) == (0, math.inf)
    assert table["per_layer"][0] == {"layer": 0, "threshold": "inf", "harmful": 0.0, "lookalike": 0.0,
                                     "harmless": 0.0, "admissible_thresholds": 1}
    assert "stays shut" in table["reason"] and "\n" not in table["reason"]
    json.dumps(table, allow_nan=False)  # strict JSON: +inf is the string "inf"


def test_choose_gate_rejects_malformed_input():
    val = val_sets([[1.0]], [[0.0]], [[0.0]])
    assert "'lookalike' is missing" in one_line_error(lambda: choose_gate({"harmful": val["harmful"]}, [0], NO_BASE))
    assert "shape (1, 1)" in one_line_error(lambda: choose_gate(val, [0, 1], NO_BASE))
    assert "base_refusal['harmless']" in one_line_error(lambda: choose_gate(val, [0], {"lookalike": 0.1}))


def test_fit_gate_then_save_and_load_round_trip(qwen2, tmp_path):
    model, tok = qwen2
    direction = Direction(torch.randn(model.config.hidden_size), layer=2, pos=-2)
    lines = []
    gate = fit_gate(model, tok, direction, harmful_train=HARMFUL, benign_train=BENIGN, harmful_val=PROMPTS,
                    lookalike_val=LOOKALIKE, harmless_val=HARMLESS, base_refusal={"lookalike": 0.3, "harmless": 0.0},
                    log=lines.append)
    # layer 0 reads the template token's embedding at pos -2 in every prompt: no direction there
    assert gate.fit["skipped_layers"] == [0] and [row["layer"] for row in gate.fit["table"]] == [1, 2]
    assert gate.layer in (1, 2) and gate.pos == -2 and gate.steer_layer == 2 and gate.rule == RULE
    want = condition_directions(model, tok, HARMFUL, BENIGN, -2, [gate.layer])[gate.layer]
    assert torch.equal(gate.vector, want)
    val = torch.cat([projections(model, tok, p, {gate.layer: want}, -2) for p in (PROMPTS, LOOKALIKE, HARMLESS)], 1)
    assert gate.threshold == math.inf or gate.threshold in val[0].double().tolist()
    assert gate.fit["n"] == {"harmful_train": 4, "benign_train": 4, "harmful_val": 4, "lookalike_val": 3,
                             "harmless_val": 3}
    assert gate.fit["val_rates"]["lookalike"] <= 0.35 and gate.fit["val_rates"]["harmless"] == 0.0
    assert any(line.startswith("gate chosen:") for line in lines)
    with pytest.raises(SafeSteerError, match="at or before the steering layer 2"):
        fit_gate(model, tok, direction, harmful_train=HARMFUL, benign_train=BENIGN, harmful_val=PROMPTS,
                 lookalike_val=LOOKALIKE, harmless_val=HARMLESS, base_refusal=NO_BASE, layers=[1, 3])

    written = save_gate(tmp_path / "gate", gate, {"model": "tiny-qwen2"})
    assert json.loads((tmp_path / "gate" / "gate.json").read_text()) == written and written["model"] == "tiny-qwen2"
    loaded = load_gate(tmp_path / "gate")
    assert torch.equal(loaded.vector, gate.vector)
    assert (loaded.layer, loaded.pos, loaded.threshold, loaded.steer_layer, loaded.rule, loaded.reason, loaded.fit) \
        == (gate.layer, gate.pos, gate.threshold, gate.steer_layer, gate.rule, gate.reason, gate.fit)
    shut = Gate(gate.vector, 1, -1, math.inf, 2, reason="shut")
    save_gate(tmp_path / "shut", shut)
    assert json.loads((tmp_path / "shut" / "gate.json").read_text())["threshold"] == "inf"
    assert load_gate(tmp_path / "shut").threshold == math.inf


def test_load_gate_names_the_file_of_a_missing_or_malformed_artifact(tmp_path):
    assert "gate.json" in one_line_error(lambda: load_gate(tmp_path / "nowhere"))
    save_gate(tmp_path, Gate(torch.ones(8), 1, -1, 0.5, 2))
    path = tmp_path / "gate.json"
    good = json.loads(path.read_text())
    for broken in ({k: v for k, v in good.items() if k != "threshold"}, {**good, "threshold": "high"},
                   {**good, "layer": [1]}):
        path.write_text(json.dumps(broken))
        message = one_line_error(lambda: load_gate(tmp_path))
        assert str(path) in message and "refit the gate" in message
    path.write_text(json.dumps({**good, "layer": 3}))  # read after the steering layer 2
    assert "0 <= layer <= steer_layer" in one_line_error(lambda: load_gate(tmp_path))
    path.write_text("{not json")
    assert str(path) in one_line_error(lambda: load_gate(tmp_path))


def test_the_rule_in_the_docstring_is_the_rule_in_the_artifact():
    assert " ".join(RULE.split()) in " ".join(gate_module.__doc__.split())


def test_refusal_gate_reads_stage_1s_direction_where_it_was_found(qwen2):
    model, tok = qwen2
    direction = Direction(torch.randn(model.config.hidden_size), layer=2, pos=-1)
    base = {"lookalike": 0.34, "harmless": 0.0}
    gate = gate_module.refusal_gate(model, tok, direction, harmful_val=PROMPTS, lookalike_val=LOOKALIKE,
                                    harmless_val=HARMLESS, base_refusal=base, log=lambda _: None)
    val = {name: projections(model, tok, p, {2: direction.vector}, -1)
           for name, p in (("harmful", PROMPTS), ("lookalike", LOOKALIKE), ("harmless", HARMLESS))}
    layer, threshold, table = choose_gate(val, [2], base)
    assert (gate.layer, gate.pos, gate.steer_layer, gate.threshold) == (2, -1, 2, threshold)
    assert torch.allclose(gate.unit, direction.vector / direction.vector.norm()) and gate.rule == RULE
    assert gate.fit["table"] == table["per_layer"] and gate.fit["val_rates"]["harmless"] == 0.0
    assert gate.fit["n"] == {"harmful_val": 4, "lookalike_val": 3, "harmless_val": 3}
