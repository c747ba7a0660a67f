"""Can the frozen models (base, teacher) run in a cheaper number format? Speed against agreement, on val.

The base and the teacher never train, so their forward could run in bfloat16 (the CPU's AVX512-BF16, or a GPU) or
with int8 dynamic quantisation of the linear layers (`torch.ao.quantization.quantize_dynamic`). Either is only worth
it where the greedy answers, and so every verdict read on them, stay what float32 gives. This script generates the
greedy answers of each validation set once per form and compares them with float32's: identical answers, and
equal verdicts (substring and coherent refusal, helpfulness, capability correctness). Nothing here touches a test
split, and nothing in the package switches form unless these numbers say so (docs/speed.md).

    python benchmarks/frozen_numerics.py [--model qwen2.5-coder-0.5b-instruct] [--run runs/qwen42] [--n N] \
        [--tokens 64] [--forms bf16,int8] [--json runs/bench/frozen_numerics.json]

`--run` adds the run's teacher (the model steered by the run's direction) beside the base. Each form and view gets
one untimed warm-up generation first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.judges import CoherentRefusalJudge, RefusalJudge, is_helpful
from safesteer_interp.core.models import load_model
from safesteer_interp.data.prompts import load_instructions
from safesteer_interp.direction.artifact import load_direction
from safesteer_interp.evaluate.capability import is_correct, load_capability
from safesteer_interp.teacher import SteeredTeacher

SUBSTRING, COHERENT = RefusalJudge(), CoherentRefusalJudge()
HOW_TO_READ = ("per form and view ('bf16 base'): seconds of greedy generation over every set, speedup = float32 "
               "seconds / these; per set: identical_answers = share of rows whose answer text equals float32's, "
               "*_agreement = share of rows whose verdict equals float32's, *_rate = [float32 rate, this form's rate]; "
               "tokens = new tokens per answer; rows = val prompts per set")
REFUSAL_SETS = {"harmful": "harmbench-val", "lookalike": "lookalike-val", "harmless": "harmless-val"}


def forms(model, names: list[str]) -> Iterator[tuple[str, object]]:
    """(name, a frozen copy of `model` in that number format), each made when the loop reaches it rather than all
    up front (float32 stays the reference)."""
    for name in names:
        if name == "bf16":
            yield name, copy.deepcopy(model).to(torch.bfloat16)
        elif name == "int8":
            with warnings.catch_warnings():  # torch.ao's deprecation notice: the function still runs in 2.13
                warnings.simplefilter("ignore")
                quantised = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                                                   dtype=torch.qint8)
            yield name, quantised
        else:
            raise SystemExit(f"--forms: {name!r} is not one of bf16, int8")


def verdicts(group: str, answers: list[str], items: list[dict]) -> dict[str, list[bool]]:
    """Every verdict the evaluation reads on this set's answers."""
    if group == "capability":
        return {"correct": [is_correct(a, it["expected"], it.get("accept", ()), instruction=it["instruction"])
                            for a, it in zip(answers, items)]}
    out = {"refused": SUBSTRING(answers), "refused_strict": COHERENT(answers)}
    if group == "harmless":
        out["helpful"] = [is_helpful(a) for a in answers]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--run", type=Path, default=None, help="a run folder: its teacher is compared too")
    ap.add_argument("--n", type=int, default=None, help="prompts per val set (the first n; default all)")
    ap.add_argument("--tokens", type=int, default=64, help="greedy answer length (the fixed evaluation's)")
    ap.add_argument("--forms", default="bf16,int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    capability = load_capability("capability-val")[:args.n]
    sets = {g: load_instructions(name)[:args.n] for g, name in REFUSAL_SETS.items()}
    sets["capability"] = [it["prompt"] for it in capability]
    direction = load_direction(args.run) if args.run else None

    def answers_of(m, view: str) -> tuple[dict[str, list[str]], float]:
        """Every set's greedy answers from model `m` seen as `view` ('base' or 'teacher'), and the seconds taken."""
        context = SteeredTeacher(m, tokenizer, direction).active if view == "teacher" else contextlib.nullcontext
        with torch.inference_mode(), context():
            generate_answers(m, tokenizer, sets["harmless"][:2], max_new_tokens=4)  # warm-up, untimed
            start, out = time.perf_counter(), {}
            for group, prompts in sets.items():
                out[group] = generate_answers(m, tokenizer, prompts, max_new_tokens=args.tokens)
        return out, time.perf_counter() - start

    views = ["base"] + (["teacher"] if direction is not None else [])
    reference = {view: answers_of(model, view) for view in views}
    report = {"how_to_read": HOW_TO_READ, "model": args.model, "run": str(args.run) if args.run else None,
              "rows": {g: len(p) for g, p in sets.items()}, "tokens": args.tokens, "threads": args.threads,
              "float32_seconds": {view: round(reference[view][1], 1) for view in views}, "forms": {}}
    print("float32:", report["float32_seconds"], flush=True)
    for name, m in forms(model, args.forms.split(",")):
        for view in views:
            (ref, seconds), (got, secs) = reference[view], answers_of(m, view)
            row = {"seconds": round(secs, 1), "speedup": round(seconds / secs, 2), "sets": {}}
            for group, prompts in sets.items():
                ref_v, got_v = verdicts(group, ref[group], capability), verdicts(group, got[group], capability)
                row["sets"][group] = {
                    "identical_answers": round(sum(a == b for a, b in zip(ref[group], got[group])) / len(prompts), 4),
                    **{f"{k}_agreement": round(sum(x == y for x, y in zip(ref_v[k], got_v[k])) / len(prompts), 4)
                       for k in ref_v},
                    **{f"{k}_rate": [round(sum(ref_v[k]) / len(prompts), 4), round(sum(got_v[k]) / len(prompts), 4)]
                       for k in ref_v}}
            report["forms"][f"{name} {view}"] = row
            print(f"{name} {view}: {secs:.1f} s ({row['speedup']}x)", json.dumps(row["sets"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
