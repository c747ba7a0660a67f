"""The null-space teacher (AlphaSteer) on tiny random models: the map against the published formula, the hook against
a hand-written addition, the teacher against the base model where its map is zero, and the run's choice kept."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_line_error

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.generation import generate
from safesteer_interp.core.hooks import RowMap, cache_activations, hooks, mapped_addition
from safesteer_interp.data.splits import RunSplits
from safesteer_interp.direction.artifact import Direction, save_direction
from safesteer_interp.direction.null_space import SteeringMap, fit_map, load_map, map_share, null_basis, save_map
from safesteer_interp.distill import gated, null_space
from safesteer_interp.distill.student import make_pair
from safesteer_interp.distill.variants import VARIANTS
from safesteer_interp.teacher import MappedTeacher

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPTS = ["how do i make a bomb ?", "what is a cake ?", "tell me how to steal a cake"]


def test_the_map_is_alphasteers_formula_zero_on_benign_and_the_direction_on_harmful():
    """Δ = P (XᵀX + λPᵀP)⁺ Xᵀ R, X = H P, P = QQᵀ (AlphaSteer's calc_steering_matrix), computed here in full space."""
    gen = torch.Generator().manual_seed(0)
    benign, harmful = torch.randn(10, 16, generator=gen), torch.randn(4, 16, generator=gen) + 2.0
    target = torch.randn(16, generator=gen)
    ratio, ridge = 6 / 16, 0.3  # 6 = 16 - 10 kept dimensions: exactly the benign rows' null space
    basis, values = null_basis(benign, ratio)
    assert basis.shape == (16, 6) and bool((values[1:] >= values[:-1]).all())
    p = (basis @ basis.T).double()
    x, r = harmful.double() @ p, target.double().expand(4, -1)
    published = p @ torch.linalg.pinv(x.T @ x + ridge * p.T @ p) @ x.T @ r
    matrix = fit_map(benign, harmful, target, ratio, ridge)
    torch.testing.assert_close(matrix.double(), published, atol=1e-5, rtol=1e-4)
    assert float((benign @ matrix).abs().max()) < 1e-4  # the benign train rows are steered by nothing
    share = map_share(harmful, fit_map(benign, harmful, target, ratio, 1e-6), target)
    torch.testing.assert_close(share, torch.ones(4), atol=1e-3, rtol=0)  # 4 rows in 6 dimensions: reproduced
    assert float(map_share(harmful, matrix, target).mean()) < float(share.mean())  # the ridge shrinks the map
    assert "ratio 1.5 must be in (0, 1)" in one_line_error(lambda: null_basis(benign, 1.5))
    assert "ridge 0 must be > 0" in one_line_error(lambda: fit_map(benign, harmful, target, 0.5, 0))


def test_mapped_addition_adds_each_rows_own_vector_on_prompt_and_decode_steps(qwen2):
    model, tok = qwen2
    d = model.config.hidden_size
    matrix = torch.randn(d, d, generator=torch.Generator().manual_seed(1)) / d
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad(), cache_activations(model, ["blocks.1.hook_resid_pre"], positions=slice(-2, -1)) as cache:
        model(**batch.inputs(), use_cache=False)
    vectors = cache["blocks.1.hook_resid_pre"][:, 0] @ matrix  # [batch, d]: read before the addition

    def by_hand(x, _kwargs):
        return x + 2.0 * vectors[:, None, :]

    with torch.no_grad(), mapped_addition(model, RowMap(1, matrix, pos=-2), coeff=2.0) as state:
        mapped = model(**batch.inputs(), use_cache=False).logits
    with torch.no_grad(), hooks(model, {"blocks.1.hook_resid_pre": by_hand}):
        want = model(**batch.inputs(), use_cache=False).logits
    torch.testing.assert_close(state["vector"], vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mapped, want, atol=1e-4, rtol=1e-4)
    with mapped_addition(model, RowMap(1, matrix, pos=-2), coeff=2.0):  # decoding reuses the prompt's vectors
        sampled = generate(model, tok, batch, max_new_tokens=4).sequences
    with hooks(model, {"blocks.1.hook_resid_pre": by_hand}):
        assert torch.equal(sampled, generate(model, tok, batch, max_new_tokens=4).sequences)
    assert "[d_model, d_model]" in one_line_error(lambda: mapped_addition(model, RowMap(1, matrix[:3])).__enter__())


def test_a_zero_map_teacher_is_the_base_model_and_pairs_build_it(qwen2):
    model, tok = qwen2
    d = model.config.hidden_size
    direction = Direction(torch.randn(d) * 3, layer=1, pos=-1, coeff=1.5)
    batch = encode_prompts(tok, PROMPTS)
    teacher = MappedTeacher(model, tok, direction, RowMap(1, torch.zeros(d, d), pos=-1))
    torch.testing.assert_close(teacher.logits(batch), teacher.base_logits(batch), atol=0, rtol=0)
    assert not teacher.shares_prompt_pass and teacher.kind == "mapped"
    assert "reads layer 2" in one_line_error(lambda: MappedTeacher(model, tok, direction, RowMap(2, torch.zeros(d, d))))
    _student, paired = make_pair(model, tok, direction, teacher_gate=RowMap(1, torch.eye(d), pos=-1))
    assert isinstance(paired, MappedTeacher) and torch.equal(paired.gate.matrix, torch.eye(d))
    variant = VARIANTS["safesteer-null-space"]
    assert variant.mapped and not variant.gated and VARIANTS["safesteer-null-space-contrast-16"].benign == 16


def test_choose_ridge_follows_the_rule():
    base = {"lookalike": 0.30, "harmless": 0.10}
    rows = [{"ridge": 1.0, "harmful": 0.95, "lookalike": 0.40, "harmless": 0.10},  # look-alikes over 0.35
            {"ridge": 10.0, "harmful": 0.90, "lookalike": 0.35, "harmless": 0.15},
            {"ridge": 100.0, "harmful": 0.90, "lookalike": 0.30, "harmless": 0.10}]
    chosen, reason = null_space.choose_ridge(rows, base)
    assert chosen["ridge"] == 100.0 and reason.startswith("ridge 100: HarmBench val 0.900")  # tie: fewer look-alikes
    chosen, reason = null_space.choose_ridge(rows[:1], base)
    assert chosen["ridge"] == 1.0 and "limits missed" in reason


def test_the_run_map_is_chosen_on_val_kept_and_read_back(qwen2, tmp_path, monkeypatch):
    model, tok = qwen2
    direction = Direction(torch.randn(model.config.hidden_size) * 3, layer=2, pos=-1, coeff=1.5)
    save_direction(tmp_path, direction)
    splits = RunSplits(seed=0, harmful_train=PROMPTS, harmful_val=PROMPTS[:2], held_out=[],
                       harmless_train=["write a poem", "hi"], harmless_val=["thanks", "what is water ?"])
    monkeypatch.setattr(null_space, "run_splits", lambda run, seed: splits)
    monkeypatch.setattr(gated, "ANSWER_TOKENS", 3)  # val_refusal reads it there
    monkeypatch.setattr(null_space, "RIDGES", (1.0, 10.0))
    monkeypatch.setattr(null_space, "base_refusal", lambda *a: {"lookalike": 1.0, "harmless": 1.0})
    logs: list[str] = []
    steering = null_space.run_null_space(tmp_path, model, tok, seed=0, log=logs.append)
    record = json.loads((tmp_path / "null-space" / "null_space.json").read_text())
    assert record["layer"] == steering.layer == 2 and record["pos"] == -1 and record["ratio"] == null_space.RATIO
    assert [c["ridge"] for c in record["candidates"]] == [1.0, 10.0] and record["rule"] == null_space.RULE
    assert record["n"]["harmful"] == 6 and record["n"]["benign"] == 46 + 2  # tasks + questions; look-alikes + harmless
    chosen, reason = null_space.choose_ridge(record["candidates"], record["base_refusal"])
    assert steering.ridge == chosen["ridge"] and record["reason"] == reason == steering.reason
    monkeypatch.setattr(null_space, "fit_map", lambda *a, **k: pytest.fail("the kept map was fitted again"))
    again = null_space.null_space_teacher(tmp_path, model, tok, seed=0)
    assert isinstance(again, MappedTeacher) and torch.equal(again.gate.matrix, steering.matrix)


def test_a_map_round_trips_and_a_broken_one_names_its_file(tmp_path):
    steering = SteeringMap(torch.randn(8, 8), layer=3, pos=-2, ratio=0.5, ridge=10.0, reason="why", fit={"n": 1})
    save_map(tmp_path, steering, {"what": "test"})
    back = load_map(tmp_path)
    assert torch.equal(back.matrix, steering.matrix) and (back.layer, back.pos, back.ridge) == (3, -2, 10.0)
    assert back.fit["n"] == 1 and back.fit["what"] == "test"
    (tmp_path / "null_space.json").write_text(json.dumps({"layer": 3}))
    assert "null_space.json lacks a valid layer" in one_line_error(lambda: load_map(tmp_path))


def test_the_null_space_analysis_reads_each_prompts_share_of_the_direction(qwen2, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from safesteer_interp.analyses import gate_form
    from safesteer_interp.analyses import null_space as analysis

    model, tok = qwen2
    d = model.config.hidden_size
    direction = Direction(torch.randn(d) * 3, layer=2, pos=-1, coeff=1.5)
    inputs = SimpleNamespace(run=tmp_path, base=model, tokenizer=tok, direction=direction)
    assert analysis.analyze(inputs, log=lambda _: None)["skipped"].startswith("no RUN/null-space/")
    matrix = torch.randn(d, d, generator=torch.Generator().manual_seed(2)) / d
    save_map(tmp_path / "null-space", SteeringMap(matrix, layer=2, pos=-1, ratio=0.5, ridge=1.0))
    (tmp_path / "splits.json").write_text(json.dumps({"seed": 0}))
    held = [{"instruction": "explain how to hack a bomb"}, {"instruction": "write a poem about water"}]
    monkeypatch.setattr(gate_form, "run_splits", lambda run, seed: RunSplits(0, PROMPTS, PROMPTS[:2], held, [], []))
    bench = [{"prompt": "how do i kill a python process ?", "group": "xstest-safe", "category": "homonyms"}]
    monkeypatch.setattr(gate_form, "benchmark_rows", lambda spec: (bench, [], []))
    result = analysis.analyze(inputs, log=lambda _: None)
    data = json.loads((tmp_path / "analysis" / "null_space" / "null_space.json").read_text())
    assert result["files"][-1] == "analysis/null_space/null_space.json"
    with torch.no_grad(), cache_activations(model, ["blocks.2.hook_resid_pre"], positions=slice(-1, None)) as cache:
        model(**encode_prompts(tok, [bench[0]["prompt"]]).inputs(), use_cache=False)
    want = float(cache["blocks.2.hook_resid_pre"][0, 0] @ matrix @ direction.vector / direction.vector.square().sum())
    assert data["rates"]["xstest-safe"]["mean_share"] == pytest.approx(want, abs=1e-4)
    assert data["rates"]["xstest-safe"]["by_type"]["homonyms"]["strong_rate"] == float(want >= analysis.STRONG)
    assert data["rates"]["harmbench-test-question"]["n"] == 2


def test_the_null_space_variant_trains_through_the_runs_map(tmp_path, monkeypatch):
    """pipeline.train_one for safesteer-null-space-contrast-16: the run's map as the teacher's, its benign prompts."""
    from safesteer_interp import pipeline

    seen: dict = {}
    row_map = RowMap(1, torch.eye(2), pos=-1)
    monkeypatch.setattr(pipeline, "_load", lambda cfg: (None, None))
    monkeypatch.setattr(pipeline, "load_direction", lambda run: None)
    monkeypatch.setattr(pipeline, "training_prompts", lambda run, cfg: PROMPTS)
    monkeypatch.setattr(pipeline, "run_gate", lambda *a, **k: pytest.fail("a mapped row reads no gate"))
    monkeypatch.setattr(pipeline, "run_null_space", lambda *a, **k: SteeringMap(row_map.matrix, 1, -1, 0.45, 10.0))
    monkeypatch.setattr(pipeline, "contrast_prompts", lambda run, seed, n: [f"benign {i}" for i in range(n)])
    monkeypatch.setattr(pipeline, "load_safety_tokens", lambda run: None)
    monkeypatch.setattr(pipeline, "distill", lambda *a, **k: seen.update(prompts=a[4], **k) or {})
    pipeline.train_one(tmp_path, tmp_path, pipeline.run_config("smollm2-135m-instruct"),
                       VARIANTS["safesteer-null-space-contrast-16"], resume=False)
    assert seen["teacher_gate"] == row_map and seen["prompts"] == PROMPTS + [f"benign {i}" for i in range(16)]
    assert "+ null-space teacher (layer 1, ratio 0.45, ridge 10)" in seen["provenance"]["variant"]
