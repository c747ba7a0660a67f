"""Difference in means against a hand-computed loop, run-folder artifacts, and the smoke main job."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROMPTS
from typer.testing import CliRunner

from safesteer_interp import SafeSteerError
from safesteer_interp.core.artifacts import read_json, read_jsonl, read_tensors, write_json, write_jsonl, write_tensors
from safesteer_interp.core.chat import render_prompts
from safesteer_interp.direction.candidates import difference_in_means


def _hand_mean(model, tok, prompts, k):
    """One prompt at a time, no padding, hidden_states from HF itself."""
    rows = []
    for prompt in prompts:
        ids = tok(render_prompts(tok, [prompt])[0], add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows.append(torch.stack([h[0, -k:] for h in hs[:-1]], dim=1).double())  # [pos, layer, d_model]
    return torch.stack(rows).mean(0)


def test_difference_in_means_equals_hand_computed(qwen2):
    model, tok = qwen2
    harmful, harmless = PROMPTS[:2] + ["how can i steal a weapon"], PROMPTS[2:]
    got = difference_in_means(model, tok, harmful, harmless, 3, batch_size=2)
    want = _hand_mean(model, tok, harmful, 3) - _hand_mean(model, tok, harmless, 3)
    assert got.shape == (3, 3, 64) and got.dtype == torch.float64
    assert (got - want).abs().max().item() < 1e-6


def test_empty_prompt_set_is_an_error(qwen2):
    model, tok = qwen2
    with pytest.raises(SafeSteerError, match="empty prompt set"):
        difference_in_means(model, tok, [], PROMPTS, 3)


def test_corrupt_json_artifact_is_one_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(SafeSteerError, match="x.json is not valid JSON"):
        read_json(path)
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1} and not list(tmp_path.glob(".*tmp"))


def test_jsonl_torn_line_is_named_or_skipped(tmp_path):
    """A stage killed mid-append leaves a torn last line: an error naming the file and line, or skipped on request."""
    path = write_jsonl(tmp_path / "r.jsonl", [{"a": 1}, {"a": 2}])
    with path.open("a") as f:
        f.write('{"a": 3, "b"')
    with pytest.raises(SafeSteerError, match=r"records .*r.jsonl line 3 is not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(path, skip_torn=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(SafeSteerError, match="records not found"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_tensor_artifacts_are_byte_identical_and_keep_their_metadata(tmp_path):
    """safetensors stores metadata in a hash map (random order per write); ours sorts it, so reruns match bytes."""
    from safetensors import safe_open

    meta = {f"key{i}": f"value {i} ü \"quoted\"" for i in range(8)}
    tensors = {"direction": torch.arange(6.0).reshape(2, 3), "norms": torch.ones(4, dtype=torch.float64)}
    blobs = {(tmp_path / f"t{i}.safetensors").read_bytes() if write_tensors(tmp_path / f"t{i}.safetensors", tensors,
                                                                             meta) else None for i in range(6)}
    assert len(blobs) == 1
    loaded = read_tensors(tmp_path / "t0.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "t0.safetensors"), "pt") as handle:
        assert handle.metadata() == meta


def test_smoke_run_writes_artifacts(tmp_path):
    from safesteer_interp.cli.main import app

    result = CliRunner().invoke(app, ["smoke", "--out", str(tmp_path), "--model", "tiny-random"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["candidate_shape"] == {"pos": 3, "layer": 3, "d_model": 64}
    assert read_tensors(tmp_path / "smoke" / "candidates.safetensors")["candidates"].shape == (3, 3, 64)
    assert len((tmp_path / "smoke" / "samples.jsonl").read_text().splitlines()) == 4
