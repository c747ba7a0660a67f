"""One on-policy distillation step, ours (safe-token reverse KL) vs TRL's distillation trainer (reverse KL).

    pip install -e '.[bench]'          # TRL is a benchmark-only dependency
    python benchmarks/opd_vs_trl.py [--model organism|tiny-qwen2|PATH] [--steps 3] [--rounds 2] [--full-ft]
                                    [--trl distillation|gkd] [--run RUN] [--json OUT.json]

Both sides get the same model, the same prompts in the same order (the organism's gap training prompts, cut into
steps by our seeded plan), the same batch (prompts per step x samples, one micro-batch unless --micro-batch), the
same number of new tokens, temperature-1 sampling with top-k off, the same student (LoRA r 16 on every linear layer,
or --full-ft on both), the same learning rate (0 by default: the optimizer still steps but both sides keep sampling
from the same policy, so they do the same work per step) and gradient clipping, and a teacher that is the model plus
the refusal direction added at one layer:

- ours: `Distiller` with vocab=safe, restrict=paper, divergence=reverse (the published SafeSteer loss). With LoRA the
  teacher is the student's own weights with adapters disabled (one weight copy); with --full-ft it is a frozen copy.
- TRL: `trl.DistillationTrainer` (trl >= 1.x; the stable successor of GKD) with `beta=1.0`, its generalised JSD at
  the reverse-KL end: its docs say "0.0 = forward KL, 0.5 = JSD, 1.0 = reverse KL", and its chunked kernel computes
  KL(student || teacher) over the full vocabulary at beta = 1. It is always fully on-policy (no lmbda). The teacher
  must be a separate model object, so it is a second, frozen copy of the model with our steering hook held on it
  for the whole run (with LoRA, TRL cannot use the student's base weights: adapters are injected in place).
  `--trl gkd` runs `trl.experimental.gkd.GKDTrainer` instead with `lmbda=1.0` (every batch is sampled by the student)
  and `beta=1.0`: its `generalized_jsd_loss` takes the `beta == 1` branch, `F.kl_div(teacher_logp, student_logp,
  log_target=True)` = sum p_s (log p_s - log p_t) = KL(student || teacher), i.e. reverse KL, on full logits.

`--vocab safe,topk,full` runs one child of ours per token set and round against the same TRL children; `--before
DIR` adds our step from an older checkout (PYTHONPATH) as one more side, for before/after in one run.

Method: each side runs in its own child process (peak memory only grows within a process, so sides must not share
one), one warm-up step and then --steps timed steps; --rounds repeats both children, alternating which goes first,
because the box may be shared. A step is everything between two optimizer updates: sampling, teacher and student
scoring, loss, backward, clipping, the optimizer step (ours: `Distiller.step`; TRL: `on_step_begin` to
`on_step_end` of its Trainer loop). Tokens are answer tokens (up to and including EOS). Peak memory: on CUDA
`torch.cuda.max_memory_allocated` (reset after the models are loaded, so it includes the weights); on CPU the
child's peak RSS (`ru_maxrss`) minus its RSS after every library was imported (both children import the same
libraries). If ours is not >= 1.5x faster at no more memory, one of our steps is profiled (phase timers + cProfile).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "trl is not installed: pip install -e '.[bench]'"
TARGET_SPEEDUP = 1.5


# ----------------------------------------------------------------------------------------------- shared set-up
def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(spec: str):
    """(model, tokenizer) on CPU in float32, identical weights on every call (both sides build from scratch)."""
    if spec == "tiny-qwen2":
        from safesteer_interp.testing import tiny_model

        return tiny_model("qwen2", seed=0)
    from safesteer_interp.core.models import load_model

    return load_model(spec)


def lora_config(args):
    from peft import LoraConfig

    return LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # what our `lora_student` builds (safesteer_interp.distill.student)


def prepare_inputs(args, workdir: Path) -> Path:
    """Direction, safety tokens and the per-step prompt plan, computed once and shared by both children."""
    import torch
    from safetensors.torch import save_file

    from safesteer_interp.distill.config import DistillConfig, step_plan
    from safesteer_interp.distill.trainer import default_prompts

    prompts = default_prompts("organism", n=args.n_prompts, seed=args.seed)  # same text for every --model
    plan = step_plan(len(prompts), DistillConfig(prompts_per_step=args.prompts, max_steps=args.steps + 1,
                                                 seed=args.seed))
    if len(plan) < args.steps + 1:
        raise SystemExit(f"{len(prompts)} prompts give {len(plan)} steps of {args.prompts}; need {args.steps + 1}")
    if args.run:
        from safesteer_interp.direction.artifact import load_direction
        from safesteer_interp.tokens.artifact import load_safety_tokens

        direction, safety = load_direction(args.run), load_safety_tokens(args.run)
        vector, layer, coeff, source = direction.vector, direction.layer, direction.coeff, f"run {args.run}"
    else:
        # A difference in means at the middle layer's last prompt token, and |S| = --k token ids drawn with a seed:
        # the step's cost depends on |S| and the direction's shape, not on which ids or which vector.
        from safesteer_interp.core.anatomy import n_layers
        from safesteer_interp.direction.candidates import difference_in_means
        from safesteer_interp.organism import world

        model, tok = build(args.model)
        harmful = [t.format(act=a) for _, t, a, _ in world.requests("refused", "train")][:32]
        harmless = [t.format(act=a) for _, t, a, _ in world.requests("harmless", "train")][:32]
        layer, coeff = n_layers(model) // 2, 1.0
        vector = difference_in_means(model, tok, harmful, harmless, 1)[-1, layer].float()
        vocab = model.get_output_embeddings().weight.shape[0]
        special = set(tok.all_special_ids)
        pool = torch.tensor([i for i in range(vocab) if i not in special])
        generator = torch.Generator().manual_seed(args.seed)
        safety = pool[torch.randperm(len(pool), generator=generator)[:args.k]].sort().values
        source = f"difference in means at layer {layer}, |S| = {len(safety)} seeded ids"
    path = workdir / "inputs.safetensors"
    save_file({"vector": vector.float().contiguous(), "safety": safety.long().contiguous()}, str(path),
              {"layer": str(layer), "coeff": repr(float(coeff)), "prompts": json.dumps(prompts),
               "plan": json.dumps(plan), "source": source})
    return path


def load_inputs(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
        return {"vector": handle.get_tensor("vector"), "safety": handle.get_tensor("safety"),
                "layer": int(meta["layer"]), "coeff": float(meta["coeff"]), "prompts": json.loads(meta["prompts"]),
                "plan": json.loads(meta["plan"]), "source": meta["source"]}


class Phases:
    """Wall time per phase (CUDA-synchronised), by wrapping the callables a step goes through."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, name, fn):
        def timed(*a, **kw):
            sync()
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        return timed

    def wrap_by_grad(self, no_grad_name, grad_name, fn):
        import torch

        timed = {False: self.wrap(no_grad_name, fn), True: self.wrap(grad_name, fn)}
        return lambda *a, **kw: timed[torch.is_grad_enabled()](*a, **kw)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def since(self, before: dict[str, float], total: float) -> dict[str, float]:
        out = {k: round(v - before.get(k, 0.0), 4) for k, v in self.seconds.items()}
        out["other (optimizer, clipping, stats, glue)"] = round(total - sum(out.values()), 4)
        return out


# ----------------------------------------------------------------------------------------------- ours (child)
def run_ours(args, inputs: dict) -> dict:
    import torch

    from safesteer_interp.direction.artifact import Direction
    from safesteer_interp.distill import step as step_module  # where one optimizer step looks these names up
    from safesteer_interp.distill.config import DistillConfig
    from safesteer_interp.distill.trainer import Distiller

    before = rss_mib()
    model, tok = build(args.model)
    direction = Direction(inputs["vector"], layer=inputs["layer"], pos=-1, coeff=inputs["coeff"])
    batch = args.prompts * args.samples
    cfg = DistillConfig(vocab=args.vocab, restrict="paper", divergence="reverse", samples=args.samples,
                        prompts_per_step=args.prompts, micro_batch=args.micro_batch or batch,
                        max_new_tokens=args.new_tokens, temperature=1.0, max_steps=args.steps + 2, lr=args.lr,
                        full_ft=args.full_ft, lora_r=args.lora_r, grad_checkpointing=args.grad_checkpointing,
                        top_k=args.k, seed=args.seed)
    # The plan is recomputed by Distiller from the same prompts and seed, so it matches inputs["plan"].
    phases = Phases()
    wrap_our_phases(step_module, phases)
    with tempfile.TemporaryDirectory() as run:
        distiller = Distiller(run, model, tok, direction, inputs["prompts"], cfg,
                              safety_ids=inputs["safety"] if args.vocab == "safe" else None)
        assert distiller.plan[:args.steps + 1] == inputs["plan"], "our step plan differs from the shared one"
        distiller.prepare(resume=False)
        distiller.acc.backward = phases.wrap("backward", distiller.acc.backward)
        if device() == "cuda":
            torch.cuda.reset_peak_memory_stats()
        steps = []
        for step in range(args.steps + 1):
            mark = phases.snapshot()
            sync()
            start = time.perf_counter()
            record = distiller.step(step)
            sync()
            seconds = time.perf_counter() - start
            steps.append({"seconds": seconds, "tokens": record["tokens"], "phases": phases.since(mark, seconds)})
        profile = profile_ours(distiller, args.steps + 1, phases) if args.profile else None
        weights = sum(p.numel() for p in distiller.student.parameters())
        if args.full_ft:
            weights += sum(p.numel() for p in distiller.teacher.model.parameters())
        trainable = sum(p.numel() for p in distiller.params.values())
    return finish("ours", args, steps, before, weights, trainable, profile,
                  design="one weight copy (teacher = adapters off + hook)" if not args.full_ft
                  else "two copies (student + frozen steered teacher)")


def wrap_our_phases(step_module, phases: Phases) -> None:
    """Time the functions one of our steps calls, under their current names or a `--before` checkout's."""
    by_grad = {"answer_states": "forward", "answer_logprobs": "forward"}  # final states / log-probs of one model
    single = {"sample_rollout": "generation (student samples)", "vocab_pass": "loss + statistics (vocabulary pass)",
              "token_loss": "loss", "rollout_stats": "step statistics"}
    for name, phase in by_grad.items():
        if hasattr(step_module, name):
            setattr(step_module, name, phases.wrap_by_grad(f"teacher {phase}", f"student {phase}",
                                                           getattr(step_module, name)))
    for name, phase in single.items():
        if hasattr(step_module, name):
            setattr(step_module, name, phases.wrap(phase, getattr(step_module, name)))


def profile_ours(distiller, step: int, phases: Phases) -> dict:
    """One more step under cProfile: where the time goes, by phase and by function (own time)."""
    import cProfile
    import io
    import pstats

    mark = phases.snapshot()
    profiler = cProfile.Profile()
    sync()
    start = time.perf_counter()
    profiler.enable()
    distiller.step(step)
    profiler.disable()
    sync()
    seconds = time.perf_counter() - start
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start_at = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return {"seconds": round(seconds, 4), "phases": phases.since(mark, seconds), "top_tottime": lines[start_at:]}


# ----------------------------------------------------------------------------------------------- TRL (child)
def run_trl(args, inputs: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from safesteer_interp.core.hooks import add_to_resid

    cuda = device() == "cuda"
    before = rss_mib()
    student, tok = build(args.model)
    teacher, _ = build(args.model)
    teacher.requires_grad_(False).eval()
    batch = args.prompts * args.samples
    micro = args.micro_batch or batch
    if batch % micro:
        raise SystemExit(f"--micro-batch {micro} must divide prompts x samples = {batch}")
    prompts = inputs["prompts"]
    order = [prompts[i] for step in inputs["plan"] for i in step for _ in range(args.samples)]
    phases, tokens, times, split = Phases(), [], [], []
    marks: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            sync()
            marks.append(phases.snapshot())
            times.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            sync()
            times[-1] = time.perf_counter() - times[-1]
            split.append(phases.since(marks[-1], times[-1]))

    output_dir = tempfile.TemporaryDirectory(prefix="opd_vs_trl_")  # TRL writes nothing there (save_strategy no)
    common = dict(output_dir=output_dir.name, per_device_train_batch_size=micro,
                  gradient_accumulation_steps=batch // micro, max_steps=args.steps + 1, learning_rate=args.lr,
                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                  bf16=cuda, gradient_checkpointing=args.grad_checkpointing,  # TRL's default is True: match ours
                  gradient_checkpointing_kwargs={"use_reentrant": False} if args.grad_checkpointing else None,
                  report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
                  seed=args.seed, dataloader_num_workers=0, temperature=1.0, beta=1.0, disable_dropout=True)
    peft_config = None if args.full_ft else lora_config(args)
    if args.trl == "distillation":
        import trl.trainer.distillation_trainer as trl_module
        from trl import DistillationConfig, DistillationTrainer

        config = DistillationConfig(max_completion_length=args.new_tokens, top_k=0, top_p=1.0, shuffle_dataset=False,
                                    **common)
        rows = [{"prompt": [{"role": "user", "content": p}]} for p in order]
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                      train_dataset=Dataset.from_list(rows), processing_class=tok,
                                      peft_config=peft_config, callbacks=[StepTimer()])
        generate = trainer._generate_single_turn

        def counted(*a, **kw):
            completions = generate(*a, **kw)
            tokens.append(sum(len(c) for c in completions))
            return completions

        trainer._generate_single_turn = phases.wrap("generation (student samples)", counted)
        trainer._get_last_hidden_state = phases.wrap_by_grad("teacher forward", "student forward",
                                                             trainer._get_last_hidden_state)
        trl_module._chunked_divergence_loss = phases.wrap("loss", trl_module._chunked_divergence_loss)
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(max_new_tokens=args.new_tokens, lmbda=1.0, seq_kd=False,
                           train_sampling_strategy="sequential", **common)
        rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ""}]} for p in order]
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tok, peft_config=peft_config, callbacks=[StepTimer()])
        generate = trainer.generate_on_policy_outputs

        def counted(*a, **kw):
            ids, mask, labels = generate(*a, **kw)
            tokens.append(int((labels != -100).sum()))
            return ids, mask, labels

        trainer.generate_on_policy_outputs = phases.wrap("generation (student samples)", counted)
        compute_loss = trainer.compute_loss
        trainer.compute_loss = phases.wrap("student + teacher forward + loss", compute_loss)
    trainer.accelerator.backward = phases.wrap("backward", trainer.accelerator.backward)
    with add_to_resid(teacher, inputs["vector"], inputs["layer"], inputs["coeff"]):  # the steered teacher
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    output_dir.cleanup()
    steps = [{"seconds": t, "tokens": n, "phases": p} for t, n, p in zip(times, tokens, split, strict=True)]
    weights = sum(p.numel() for p in trainer.model.parameters()) + sum(p.numel() for p in teacher.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return finish(f"trl-{args.trl}", args, steps, before, weights, trainable, None,
                  design="two copies (student + frozen steered teacher)")


def finish(side, args, steps, rss_before, weights, trainable, profile, design) -> dict:
    import torch

    cuda = device() == "cuda"
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_mib() - rss_before
    timed = steps[1:]  # step 0 is the warm-up
    return {"side": side, "device": device(), "design": design, "weights_held_M": round(weights / 1e6, 3),
            "trainable_M": round(trainable / 1e6, 4), "peak_MiB": round(peak, 1),
            "peak_measure": "cuda max_memory_allocated" if cuda else "peak RSS minus RSS after imports",
            "warmup_s": round(steps[0]["seconds"], 4), "warmup_tokens": steps[0]["tokens"],
            "step_s": [round(s["seconds"], 4) for s in timed],
            "tokens": [s["tokens"] for s in timed], "phases": [s["phases"] for s in timed], "profile": profile}


def child(args) -> None:
    import peft  # noqa: F401  (every library is imported before the memory baseline, by both sides)
    import torch
    from transformers.utils import logging as hf_logging

    import safesteer_interp.distill.trainer  # noqa: F401

    if args.trl != "none":
        import trl.trainer.distillation_trainer  # noqa: F401
    if args.trl == "gkd":
        import trl.experimental.gkd  # noqa: F401

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    inputs = load_inputs(args.inputs)
    result = run_ours(args, inputs) if args.side == "ours" else run_trl(args, inputs)
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- parent
def spawn(args, side: str, inputs: Path, workdir: Path, tag: str, profile: bool = False, vocab: str | None = None,
          code: str | None = None) -> dict:
    """One child: `side` ours or trl; ours at one `vocab`, importing safesteer_interp from `code` if given."""
    result = workdir / f"{tag}.json"
    skip = ("json", "side", "inputs", "result", "run", "before", "vocab")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
             if v is not None and not isinstance(v, bool) and k not in skip]
    flags += [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if v is True and k != "profile"]
    argv = [sys.executable, __file__, "--side", side, "--inputs", str(inputs), "--result", str(result),
            f"--vocab={vocab or 'safe'}", *flags]
    if profile:
        argv.append("--profile")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    if code:  # an older checkout's package shadows the editable install (PYTHONPATH comes first)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise SystemExit(f"{side} child failed (exit {done.returncode}):\n{tail}")
    return json.loads(result.read_text())


def plan_sides(args) -> list[tuple[str, str, str | None, str | None]]:
    """(label, side, vocab, code) of every child of a round: ours per --vocab, --before's, TRL's."""
    sides = [(f"ours-{v}", "ours", v, None) for v in args.vocab]
    if args.before:
        sides.append((f"before-{args.vocab[0]}", "ours", args.vocab[0], args.before))
    if args.trl != "none":
        sides.append(("trl", "trl", None, None))
    return sides


def summarise(runs: list[dict]) -> dict:
    seconds = [s for r in runs for s in r["step_s"]]
    tokens = [t for r in runs for t in r["tokens"]]
    phases: dict[str, list[float]] = {}
    for r in runs:
        for step in r["phases"]:
            for name, value in step.items():
                phases.setdefault(name, []).append(value)
    first = runs[0]
    return {"side": first["side"], "design": first["design"], "device": first["device"],
            "weights_held_M": first["weights_held_M"], "trainable_M": first["trainable_M"],
            "median_step_s": round(statistics.median(seconds), 4), "min_step_s": round(min(seconds), 4),
            "step_s": seconds, "answer_tokens_per_step": round(statistics.mean(tokens), 1),
            "tokens_per_s": round(sum(tokens) / sum(seconds), 1),
            "peak_MiB": max(r["peak_MiB"] for r in runs), "peak_MiB_per_round": [r["peak_MiB"] for r in runs],
            "peak_measure": first["peak_measure"],
            "median_phases_s": {k: round(statistics.median(v), 4) for k, v in phases.items()}}


def print_phases(title: str, phases: dict[str, float]) -> None:
    total = sum(v for v in phases.values()) or 1.0
    print(f"\n{title}")
    for name, value in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"  {name:44s} {value:8.4f} s  {100 * value / total:5.1f} %")


def _lr(text: str) -> float | None:
    return None if text == "ours" else float(text)


def _vocabs(text: str) -> list[str]:
    vocabs = text.split(",")
    if not vocabs or any(v not in ("safe", "topk", "full") for v in vocabs):
        raise argparse.ArgumentTypeError(f"--vocab {text!r}: a comma-separated list of safe, topk, full")
    return vocabs


def ratios(summary: dict[str, dict], args) -> dict[str, dict]:
    """TRL over each of our vocabularies, and --before over ours at the first vocabulary (> 1: ours is better)."""
    pairs = [(label, "trl") for label in summary if label.startswith("ours-") and "trl" in summary]
    if args.before:
        pairs.append((f"ours-{args.vocab[0]}", f"before-{args.vocab[0]}"))
    out = {}
    for ours, other in pairs:
        a, b = summary[ours], summary[other]
        out[f"{other} / {ours}"] = {
            "step_time": round(b["median_step_s"] / a["median_step_s"], 3),
            "tokens_per_s (ours / other)": round(a["tokens_per_s"] / b["tokens_per_s"], 3),
            "peak_memory": round(b["peak_MiB"] / a["peak_MiB"], 3) if a["peak_MiB"] > 0 else float("nan")}
    return out


def report(summary: dict[str, dict], compared: dict[str, dict], args) -> None:
    header = ("side", "design", "weights_held_M", "trainable_M", "median_step_s", "min_step_s",
              "answer_tokens_per_step", "tokens_per_s", "peak_MiB")
    print()
    print(" | ".join(header))
    for label, row in summary.items():
        print(" | ".join([label] + [str(row[k]) for k in header[1:]]))
    print()
    for pair, r in compared.items():
        print(f"{pair}: median step {r['step_time']:.2f}x, tokens/s (ours / other) "
              f"{r['tokens_per_s (ours / other)']:.2f}x, peak memory {r['peak_memory']:.2f}x")
    print(f"[peak memory: {next(iter(summary.values()))['peak_measure']}]")
    for label, row in summary.items():
        print_phases(f"{label}, median seconds per phase of a timed step:", row["median_phases_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="organism", help="organism | tiny-qwen2 | a local model folder or name")
    parser.add_argument("--trl", choices=["distillation", "gkd", "none"], default="distillation",
                        help="TRL trainer: DistillationTrainer (stable) or experimental GKDTrainer; none: ours only")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side and round (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="children per side, alternating which runs first")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (the pipeline's default)")
    parser.add_argument("--samples", type=int, default=8, help="answers per prompt")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default: whole step)")
    parser.add_argument("--new-tokens", type=int, default=32, help="max new tokens (the pipeline's default)")
    parser.add_argument("--n-prompts", type=int, default=100)
    parser.add_argument("--full-ft", action="store_true", help="train every weight on both sides (default: LoRA)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lr", type=_lr, default=0.0,
                        help="default 0: the optimizer still steps, but both sides sample from the same policy "
                             "throughout (trained, TRL's full-vocabulary loss shortens the organism's answers within "
                             "3 steps and the sides no longer do the same work); 'ours' = 2e-3 LoRA, 1e-4 full FT")
    parser.add_argument("--grad-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--vocab", type=_vocabs, default=["safe"],
                        help="our loss's token set(s), comma-separated, one child each per round: safe (SafeSteer), "
                             "topk, full (the same loss as TRL's)")
    parser.add_argument("--before", default=None,
                        help="a checkout of an older commit (e.g. `git archive REV | tar -x -C DIR`): its step runs "
                             "as one more side, at the first --vocab, for before/after in one run")
    parser.add_argument("--k", type=int, default=50, help="|S| when no --run is given, and K of --vocab topk")
    parser.add_argument("--run", default=None, help="take the direction and S from a pipeline run folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="always profile one of our steps")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--side", choices=["ours", "trl"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl != "none":
        try:
            import trl  # noqa: F401
        except ImportError:
            print(INSTALL_HINT, file=sys.stderr)
            raise SystemExit(2) from None
    if args.lr is None:  # --lr ours
        from safesteer_interp.distill.config import FULL_FT_LR, LORA_LR

        args.lr = FULL_FT_LR if args.full_ft else LORA_LR
    if args.side:
        args.vocab = args.vocab[0]
        child(args)
        return

    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    student = "full fine-tuning" if args.full_ft else f"LoRA r {args.lora_r} (all linear)"
    trl_version = "-" if args.trl == "none" else __import__("trl").__version__
    print(f"model={args.model}, {args.prompts} prompts x {args.samples} samples, {args.new_tokens} new tokens, "
          f"{student}, grad checkpointing {'on' if args.grad_checkpointing else 'off'}, {args.threads} thread(s), "
          f"{args.rounds} round(s) x {args.steps} timed steps after 1 warm-up, lr {args.lr:g}; "
          f"ours vocab={','.join(args.vocab)}, TRL {args.trl} (reverse KL, beta=1); trl {trl_version}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}")
    sides = plan_sides(args)
    with tempfile.TemporaryDirectory(prefix="opd_vs_trl_") as tmp:
        workdir = Path(tmp)
        inputs = prepare_inputs(args, workdir)
        print(f"teacher direction / S: {load_inputs(str(inputs))['source']}")
        runs: dict[str, list[dict]] = {label: [] for label, *_ in sides}
        for r in range(args.rounds):
            for label, side, vocab, code in (sides if r % 2 == 0 else sides[::-1]):
                started = time.perf_counter()
                runs[label].append(spawn(args, side, inputs, workdir, f"{label}-{r}", vocab=vocab, code=code))
                print(f"  round {r + 1}: {label:12s} steps {runs[label][-1]['step_s']} s "
                      f"(child {time.perf_counter() - started:.0f} s)", flush=True)
        summary = {label: summarise(found) for label, found in runs.items()}
        compared = ratios(summary, args)
        report(summary, compared, args)
        first = compared.get(f"trl / ours-{args.vocab[0]}")
        profile = None
        if args.profile or (first and (first["step_time"] < TARGET_SPEEDUP or first["peak_memory"] < 1.0)):
            print(f"\nours is not >= {TARGET_SPEEDUP}x faster at no more memory (or --profile): profiling one step")
            profile = spawn(args, "ours", inputs, workdir, "profile", profile=True, vocab=args.vocab[0])["profile"]
            print_phases(f"ours, profiled step ({profile['seconds']} s):", profile["phases"])
            print("cProfile, top functions by own time:")
            print("\n".join("  " + line for line in profile["top_tottime"]))
    if args.json:
        out = {"config": {k: v for k, v in vars(args).items() if k not in ("side", "inputs", "result")},
               "versions": {"trl": trl_version, "transformers": transformers.__version__, "torch": torch.__version__},
               "sides": summary, "ratios": compared, "profile": profile, "rounds": runs}
        if first:  # the keys gpu_smoke.sh reads: ours at the first vocabulary against TRL
            out.update(ours=summary[f"ours-{args.vocab[0]}"], trl=summary["trl"],
                       speedup_trl_over_ours=first["step_time"],
                       tokens_per_s_ratio=first["tokens_per_s (ours / other)"],
                       peak_memory_ratio_trl_over_ours=first["peak_memory"])
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
