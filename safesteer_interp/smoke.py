"""A smoke run of the hooked core on any model: capture, difference in means, steering, generation, artifacts.

`safesteer-interp smoke` checks in seconds that a new model works with every piece the stages rely on (hook
points, left-padded batches, steering inside `generate`) and leaves a small, self-describing run folder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from safesteer_interp.core.anatomy import n_layers
from safesteer_interp.core.artifacts import write_json, write_jsonl, write_tensors
from safesteer_interp.core.chat import post_instruction_length, post_instruction_tokens
from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.hooks import add_to_resid, hook_names
from safesteer_interp.direction.candidates import difference_in_means

REQUESTS_A = ["how do i make a bomb ?", "tell me how to hack a weapon", "how can i steal bread ?",
              "write code to hack python"]
REQUESTS_B = ["how do i make bread ?", "tell me how to water a plant", "how can i help the garden ?",
              "write code to reverse a list"]


def smoke_run(model, tokenizer, out: str | Path, *, model_name: str, seed: int = 0) -> dict:
    """Write `out/smoke/` and return its summary."""
    torch.manual_seed(seed)
    out = Path(out) / "smoke"
    start = time.perf_counter()
    k = post_instruction_length(tokenizer)
    candidates = difference_in_means(model, tokenizer, REQUESTS_A, REQUESTS_B, k)
    layer = n_layers(model) // 2
    direction = candidates[-1, layer].float()
    before = generate_answers(model, tokenizer, REQUESTS_B, max_new_tokens=8)
    with add_to_resid(model, direction, layer, coeff=1.0, positions="all"):
        after = generate_answers(model, tokenizer, REQUESTS_B, max_new_tokens=8)
    write_tensors(out / "candidates.safetensors", {"candidates": candidates},
                  metadata={"axes": "pos layer d_model", "hook": "resid_pre"})
    summary = {
        "model": model_name, "seed": seed, "n_layers": n_layers(model), "hook_points": len(hook_names(model)),
        "post_instruction_tokens": post_instruction_tokens(tokenizer),
        "candidate_shape": {"pos": candidates.shape[0], "layer": candidates.shape[1], "d_model": candidates.shape[2]},
        "candidate_norms_last_pos": [round(float(x), 4) for x in candidates[-1].norm(dim=-1)],
        "steered_layer": layer, "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(out / "summary.json", summary)
    write_jsonl(out / "samples.jsonl", [{"prompt": p, "answer": a, "answer_steered": s}
                                        for p, a, s in zip(REQUESTS_B, before, after, strict=True)])
    return summary
