"""Distillation memory and speed: one weight copy (LoRA, adapters off = teacher) vs a separate teacher copy.

    python benchmarks/distill_memory.py [--size wide|organism] [--steps 3] [--threads 1]

Each design runs in its own process (peak RSS only grows, so designs must not share one): `one-copy` (LoRA student,
teacher = same weights with adapters disabled), `two-copy` (LoRA student + a frozen teacher copy: same compute, one
more copy of the weights) and `full-ft` (all weights train, frozen teacher copy, AdamW state for every weight). All
run the same batch (prompts x samples sequences, micro-batch = whole step). On CUDA the peak is
torch.cuda.max_memory_allocated; on CPU it is the process's peak RSS minus its RSS before the model was built.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch

SIZES = {  # organism: the embedded organism's shape (tied embeddings, 731 words); wide: a ~60M-parameter model
    "organism": dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_mlp=512, vocab=731, tie=True),
    "wide": dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=4, d_mlp=1536, vocab=32000, tie=False),
}
PROMPTS = ["how do i hack the garden water ?", "tell me how to steal a cake", "how can i make a weapon ?",
           "write code to hack python", "tell me how to steal bread", "how do i make a bomb ?"] * 20


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(size: str, device: str):
    from transformers import AutoModelForCausalLM

    from safesteer_interp.testing import tiny_config, tiny_tokenizer

    shape = dict(SIZES[size])
    vocab, tie = shape.pop("vocab"), shape.pop("tie")
    tok = tiny_tokenizer()
    config = tiny_config("qwen2", tok, tie_embeddings=tie, **shape)
    config.vocab_size = vocab  # token ids beyond the toy tokenizer are sampled but never decoded
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def one(args) -> dict:
    """Run one design in this process and return its numbers."""
    import peft  # noqa: F401  (imported before the baseline so that library code is not counted)
    from accelerate import Accelerator  # noqa: F401

    from safesteer_interp.core.generation import eos_token_ids
    from safesteer_interp.direction.artifact import Direction
    from safesteer_interp.distill.config import DistillConfig
    from safesteer_interp.distill.trainer import Distiller
    from safesteer_interp.teacher import SteeredTeacher

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    before = rss_mb()
    model, tok = build(args.size, device)
    pristine = copy.deepcopy(model) if args.mode == "two-copy" else None
    direction = Direction(torch.randn(model.config.hidden_size) * 2, layer=1, pos=-1)
    cfg = DistillConfig(vocab="topk", top_k=20, samples=args.samples, prompts_per_step=args.prompts,
                        micro_batch=args.prompts * args.samples, max_new_tokens=args.new_tokens,
                        full_ft=args.mode == "full-ft", max_steps=args.steps + 1, lr=1e-4)
    with tempfile.TemporaryDirectory() as run:
        distiller = Distiller(run, model, tok, direction, PROMPTS, cfg)
        if pristine is not None:
            distiller.teacher = SteeredTeacher(pristine.requires_grad_(False), tok, direction)
        distiller.prepare(resume=False)
        distiller.eos = eos_token_ids(model, tok)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        distiller.step(0)  # warm-up (allocator, lazy inits); not timed
        records, start = [], time.perf_counter()
        for step in range(1, args.steps + 1):
            records.append(distiller.step(step))
        seconds = (time.perf_counter() - start) / args.steps
    held = [model] + ([pristine] if pristine is not None else []) + ([distiller.teacher.model] if args.mode == "full-ft"
                                                                      else [])
    n_params = sum(p.numel() for m in held for p in m.parameters())  # every weight in memory, adapters included
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss_mb() - before
    tokens = sum(r["tokens"] for r in records) / args.steps
    return {"mode": args.mode, "device": device, "weights_held_M": round(n_params / 1e6, 2),
            "trainable_M": round(sum(p.numel() for p in distiller.params.values()) / 1e6, 3),
            "peak_MiB": round(peak, 1), "s_per_step": round(seconds, 3), "answer_tokens_per_step": tokens,
            "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="wide")
    parser.add_argument("--mode", choices=["one-copy", "two-copy", "full-ft"], default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one(args)))
        return
    print(f"size={args.size}, {args.prompts} prompts x {args.samples} samples, {args.new_tokens} new tokens, "
          f"{args.threads} thread(s), mean of {args.steps} steps after 1 warm-up step")
    header = ("mode", "device", "weights_held_M", "trainable_M", "peak_MiB", "s_per_step", "tokens_per_s")
    print(" | ".join(header))
    for mode in ("one-copy", "two-copy", "full-ft"):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "mode"]
        argv = [sys.executable, __file__, "--mode", mode, *flags]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(" | ".join(str(row[k]) for k in header))


if __name__ == "__main__":
    main()
