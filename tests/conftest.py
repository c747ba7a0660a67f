"""Shared fixtures: tiny random chat models of real architectures, built offline."""

from __future__ import annotations

import importlib.metadata
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", category=UserWarning)
torch.set_num_threads(2)

PROMPTS = ["how do i make bread ?", "hi", "tell me a list of one two three four five", "write code to hack python"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """arch -> folder with a saved tiny random model + tokenizer (the real-model code path reads these)."""
    from safesteer_interp.testing import ARCHITECTURES, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture()
def qwen2():
    from safesteer_interp.testing import tiny_model

    return tiny_model("qwen2")


@pytest.fixture()
def one_thread():
    """Tiny models are fastest on one thread; two threads on two shared cores oversubscribe them 20-60x."""
    from safesteer_interp.organism.train import torch_threads  # lazy: the offline environment above comes first

    with torch_threads(1):
        yield


def manual_greedy(model, batch, steps, eos_ids, edit_for_step):
    """No-cache reference: recompute the whole sequence every step, argmax, append (EOS banned)."""
    from safesteer_interp.core.chat import batch_from_ids  # lazy: the offline environment above comes first

    ids, mask = batch.input_ids, batch.attention_mask
    for _ in range(steps):
        b = batch_from_ids(ids, mask)
        with torch.no_grad(), edit_for_step(ids.shape[1]):
            logits = model(**b.inputs(), use_cache=False).logits[:, -1]
        logits[:, eos_ids] = float("-inf")
        nxt = logits.argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def require_real(*distributions: str) -> None:
    """Skip (with the install command) when a real-model package is missing; fail instead under
    SAFESTEER_REQUIRE_REAL=1, which `.ci/run` sets: CI installs them (`make real`) and must run these tests."""
    missing = []
    for dist in distributions:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist)
    if missing:
        message = f"{', '.join(missing)} not installed: run `make real`"
        if os.environ.get("SAFESTEER_REQUIRE_REAL") == "1":
            pytest.fail(message)
        pytest.skip(message)


def one_line_error(call) -> str:
    """The message of the SafeSteerError `call()` raises, checked to be one line (the CLI prints it as it is)."""
    from safesteer_interp import SafeSteerError  # lazy: the package imports torch

    with pytest.raises(SafeSteerError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def binned_smoke(tok, max_steps: int = 2):
    """(config, safety ids) of a two-prompt-per-step `binned` distillation on a tiny model: S = {"sorry", "cannot"}."""
    from safesteer_interp.distill.config import DistillConfig  # lazy: the package imports torch

    cfg = DistillConfig(vocab="safe", restrict="binned", samples=2, prompts_per_step=2, micro_batch=4,
                        max_new_tokens=4, lr=1e-2, max_steps=max_steps)
    return cfg, torch.tensor(tok.convert_tokens_to_ids(["sorry", "cannot"]))
