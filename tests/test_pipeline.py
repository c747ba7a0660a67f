"""The main job on a tiny organism trained in the test: every stage runs, writes its marker, and resumes.

A few training steps do not make a model that refuses, so the direction stage gets the refusal token and relaxed
filters explicitly; the point here is orchestration (markers, resumption, invalidation), not behaviour.
"""

from __future__ import annotations

import json

import pytest

from safesteer_interp import SafeSteerError
from safesteer_interp.distill.variants import SAFESTEER, VARIANTS, Variant, variants_help
from safesteer_interp.pipeline import STAGES, RunConfig, baselines, run_pipeline, stage_status


@pytest.fixture(scope="module")
def tiny_organism(tmp_path_factory):
    from safesteer_interp.organism.train import TrainConfig, train_organism

    folder = tmp_path_factory.mktemp("organism") / "tiny"
    cfg = TrainConfig(steps=6, batch_size=8, n_layers=2, d_model=32, n_heads=2, d_mlp=64, corpus_size=64, warmup=2)
    train_organism(cfg, folder, log=lambda _msg: None)
    return str(folder)


def _config(model: str) -> RunConfig:
    return RunConfig(model=model, k=5, horizon=2, samples=2, n_prompts=4, max_new_tokens=6, prompts_per_step=2,
                     eval_per_group=3, eval_per_task=1, distill={"epochs": 1},
                     direction={"refusal_tokens": ["I'm"], "filter_prompts": False, "n_train": 8, "n_val": 4,
                                "kl_max": 1e9, "induce_min": -1e9, "prune": 0.0, "max_new_tokens": 6})


def test_run_all_stages_then_resume_after_deleting_one(tiny_organism, tmp_path):
    logs: list[str] = []
    summary = run_pipeline(tmp_path, _config(tiny_organism), log=logs.append)
    assert set(summary) == {"base", "teacher", "safesteer"}
    assert summary["base"]["harmless_kl"] is None and summary["safesteer"]["harmless_kl"] is not None
    assert all(stage_status(tmp_path).values())
    for path in ("direction/direction.safetensors", "tokens/tokens.json", "train/metrics.jsonl",
                 "train/model/config.json", "eval/teacher/eval.json", "report.html", "report.md"):
        assert (tmp_path / path).is_file(), path
    direction_marker = (tmp_path / "direction" / "done.json").read_text()

    # delete the tokens stage: direction is reused, tokens and everything after it run again
    import shutil

    shutil.rmtree(tmp_path / "tokens")
    logs.clear()
    run_pipeline(tmp_path, _config(tiny_organism), log=logs.append)
    assert any(line.startswith("[direction] done earlier") for line in logs)
    assert [line.split("]")[0][1:] for line in logs if line.endswith("running")] == list(STAGES[1:])
    assert (tmp_path / "direction" / "done.json").read_text() == direction_marker
    assert json.loads((tmp_path / "summary.json").read_text()).keys() == summary.keys()


def test_resuming_with_other_settings_is_refused(tiny_organism, tmp_path):
    (tmp_path / "run_config.json").write_text(json.dumps({"model": "other"}))
    with pytest.raises(SafeSteerError, match="was started with other settings"):
        run_pipeline(tmp_path, _config(tiny_organism), log=lambda _line: None)


def test_unknown_model_is_one_line(tmp_path):
    with pytest.raises(SafeSteerError) as err:
        run_pipeline(tmp_path / "run", RunConfig(model="./no/such/model"), log=lambda _line: None)
    assert "does not exist" in str(err.value) and "\n" not in str(err.value)


def test_baselines_of_a_run():
    """--baselines: every baseline on the organism; a real model skips top-K OPD (the organism's probe of the
    published loss's partial sum) and keeps the general-data anchor, SafeSteer plus a KL-to-base term."""
    assert baselines(RunConfig()) == {}
    organism = baselines(RunConfig(baselines=True))
    real = baselines(RunConfig(model="smollm2-135m-instruct", baselines=True))
    assert set(organism) - set(real) == {"opd-topk"}
    assert set(real) - set(organism) == {"safesteer-deep", "safesteer-recover", "safesteer-recover-anchor",
                                         "safesteer-gated", "safesteer-binned-anchor", "safesteer-recover-gated",
                                         *(f"safesteer-gated-contrast-{n}" for n in (8, 16, 32, 64)),
                                         "safesteer-gated-refusal", "safesteer-gated-refusal-contrast-16",
                                         "safesteer-null-space", "safesteer-null-space-contrast-16"}
    assert real["safesteer-binned-anchor"].loss == "safe/binned/reverse + anchor 1.0"
    assert {v.benign for v in real.values() if v.benign} == {8, 16, 32, 64}
    assert {name for name, v in real.items() if v.gated and v.gate_kind == "refusal"} == {
        "safesteer-gated-refusal", "safesteer-gated-refusal-contrast-16"}
    assert {v.gate_kind for v in real.values()} == {"task", "refusal"}
    assert real["safesteer-anchor"].loss == "safe/paper/reverse + anchor 1.0"
    assert (real["safesteer-deep"].restrict, real["safesteer-deep"].teacher_rule) == ("binned", "prefill-coeff")
    assert (real["safesteer-recover"].teacher_rule, real["safesteer-recover"].anchor_weight) == ("prefill-answer", 0)
    assert (real["safesteer-recover-anchor"].teacher_rule, real["safesteer-recover-anchor"].anchor_weight) == (
        "prefill-answer", 1.0)
    assert {v.anchor_weight for name, v in real.items() if "anchor" not in name} == {0.0}
    assert {v.trainer for v in real.values()} == {"opd", "sft"} and real["sft-teacher"].trainer == "sft"
    with pytest.raises(SafeSteerError, match="safesteer-deep.*real-model run"):  # it chooses on HarmBench val
        baselines(RunConfig(baselines=["safesteer-deep"]))
    with pytest.raises(SafeSteerError, match="safesteer-recover.*real-model run"):
        baselines(RunConfig(baselines=["safesteer-recover"]))
    with pytest.raises(SafeSteerError, match="safesteer-gated.*real-model run"):  # its gate is chosen on our val
        baselines(RunConfig(baselines=["safesteer-gated"]))
    assert real["safesteer-gated"].teacher_rule == "gated" and not real["safesteer-gated"].deep
    assert list(baselines(RunConfig(model="smollm2-135m-instruct", baselines=["opd-topk"]))) == ["opd-topk"]


def test_a_variant_is_a_typed_record_that_refuses_unknown_values():
    assert SAFESTEER.loss == "safe/paper/reverse" and not SAFESTEER.deep
    with pytest.raises(ValueError, match="restrict 'binnned'"):
        Variant("typo", "a misspelt loss", restrict="binnned")
    with pytest.raises(ValueError, match="teacher_rule"):
        Variant("typo", "an unknown teacher", teacher_rule="coeff")
    assert all(name in variants_help() for name in VARIANTS)


def test_a_named_baseline_added_to_a_finished_run_trains_and_evaluates_only_itself(tiny_organism, tmp_path):
    """`run --baseline NAME` on a finished run: the stages done are reused, NAME trains, and the evaluation runs
    again only for the model it lacks; run_config.json then names the baseline."""
    from dataclasses import replace

    run_pipeline(tmp_path, _config(tiny_organism), log=lambda _line: None)
    safesteer_model = (tmp_path / "train" / "model" / "model.safetensors").stat().st_mtime_ns
    logs: list[str] = []
    cfg = replace(_config(tiny_organism), baselines=["safesteer-binned"])
    summary = run_pipeline(tmp_path, cfg, log=logs.append)
    assert set(summary) == {"base", "teacher", "safesteer", "safesteer-binned"}
    assert any("safesteer-binned trained in" in line for line in logs)
    assert [line.split("]")[0][1:] for line in logs if line.endswith("running")] == ["eval", "report"]
    evaluated = [line.split(":")[0].strip() for line in logs if "gap refusal" in line]
    assert evaluated == ["safesteer-binned"]  # base, teacher and SafeSteer were read back, not re-evaluated
    assert (tmp_path / "train" / "model" / "model.safetensors").stat().st_mtime_ns == safesteer_model
    assert json.loads((tmp_path / "run_config.json").read_text())["baselines"] == ["safesteer-binned"]
    logs.clear()
    run_pipeline(tmp_path, cfg, log=logs.append)  # nothing left to do
    assert not any(line.endswith("running") for line in logs)
    with pytest.raises(SafeSteerError, match="unknown baseline 'nope'; pick from safesteer-binned"):
        run_pipeline(tmp_path, replace(cfg, baselines=["nope"]), log=logs.append)
    with pytest.raises(SafeSteerError, match="other settings .*seed"):
        run_pipeline(tmp_path, replace(cfg, seed=1), log=logs.append)


def test_until_stops_after_a_stage_and_a_rerun_goes_on(tiny_organism, tmp_path):
    """`run --until tokens`: direction and tokens run, nothing after them (rerun too); without it the run resumes."""
    logs: list[str] = []
    assert run_pipeline(tmp_path, _config(tiny_organism), log=logs.append, until="tokens") == {}
    assert stage_status(tmp_path) == {"direction": True, "tokens": True, "train": False, "eval": False,
                                      "report": False}
    logs.clear()
    assert run_pipeline(tmp_path, _config(tiny_organism), log=logs.append, until="tokens") == {}  # stops again
    assert [line.split("]")[0][1:] for line in logs] == ["direction", "tokens"] and not stage_status(tmp_path)["train"]
    logs.clear()
    summary = run_pipeline(tmp_path, _config(tiny_organism), log=logs.append)
    assert [line.split("]")[0][1:] for line in logs if line.endswith("running")] == ["train", "eval", "report"]
    assert set(summary) == {"base", "teacher", "safesteer"}
    with pytest.raises(SafeSteerError, match="--until 'nope' is not a stage"):
        run_pipeline(tmp_path, _config(tiny_organism), log=logs.append, until="nope")


def test_run_config_gives_python_the_defaults_the_cli_gives_each_model_kind():
    """`RunConfig()`'s own defaults are the organism's; `run_config(model)` applies the real-model ones too (the
    reference's stage-1 filters, the Δ-weighted mass with K = 20, REAL_LR), as `safesteer-interp run` does."""
    from safesteer_interp.pipeline import ORGANISM_DIRECTION, REAL_LR, REAL_TOKENS, run_config

    organism = run_config("organism", seed=3)
    assert organism.direction == {**ORGANISM_DIRECTION, "positions": "auto"} and organism.seed == 3
    assert (organism.method, organism.k, organism.lr) == ("vote", 50, None)
    real = run_config("smollm2-135m-instruct", baselines=["safesteer-gated"], teacher_positions="all")
    assert real.direction == {"positions": "all"} and "kl_max" not in real.direction
    assert (real.method, real.k, real.lr) == (REAL_TOKENS["method"], REAL_TOKENS["k"], REAL_LR)
    assert run_config("smollm2-135m-instruct", method="vote", k=50, lr=1e-5).lr == 1e-5
    assert (run_config("smollm2-135m-instruct", method="vote", k=50).method, run_config(
        "smollm2-135m-instruct", k="auto").k) == ("vote", "auto")
