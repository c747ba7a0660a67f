"""Hook overhead on a forward pass, against a plain HF forward (target: <= 1.05x).

    python benchmarks/hook_overhead.py [--threads 1] [--rounds 5]

Measures min-of-rounds wall time per forward for an organism-sized and a wider random Qwen2 model, with
left-padded chat batches, plain vs (a) caching resid_pre at the post-instruction positions of every layer,
(b) activation addition at one layer, (c) directional ablation at every layer (3 hooks per layer).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from functools import partial

import torch

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import ablate_direction, add_to_resid, cache_activations, hook_names
from safesteer_interp.testing import tiny_model


def per_forward_ms(model, batch, context_factory, rounds: int, reps: int) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(reps):
                with context_factory():
                    model(**batch.inputs(), use_cache=False)
            best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = {"organism-sized (4x128)": dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_mlp=512),
              "wider (8x512)": dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=4, d_mlp=1536)}
    prompts = [f"tell me how to make bread {'one two three ' * (i % 5)}?" for i in range(16)]
    print(f"threads={args.threads}, batch={len(prompts)} left-padded chat prompts, min of {args.rounds} rounds")
    for label, shape in shapes.items():
        model, tok = tiny_model("qwen2", **shape)
        batch = encode_prompts(tok, prompts)
        d = model.config.hidden_size
        vector = torch.randn(d)
        names = hook_names(model, ("resid_pre",))
        contexts = {
            "plain HF forward": nullcontext,
            "cache resid_pre, all layers, last 3 pos": partial(cache_activations, model, names,
                                                               positions=slice(-3, None)),
            "add_to_resid at one layer": partial(add_to_resid, model, vector, 1),
            "ablate_direction, every layer": partial(ablate_direction, model, vector),
        }
        reps = 40 if d <= 128 else 10
        per_forward_ms(model, batch, nullcontext, 1, reps)  # warm-up
        plain = per_forward_ms(model, batch, nullcontext, args.rounds, reps)
        print(f"\n{label}, tokens/batch={batch.input_ids.numel()}")
        for name, factory in contexts.items():
            ms = plain if name == "plain HF forward" else per_forward_ms(model, batch, factory, args.rounds, reps)
            print(f"  {name:42s} {ms:8.3f} ms   {ms / plain:5.3f}x")


if __name__ == "__main__":
    main()
