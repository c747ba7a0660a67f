"""Time the refusal-direction candidate sweep on the organism (target: <= 60 s on 2 CPU cores).

    python benchmarks/direction_sweep.py [--model organism] [--threads 2]

Times each part of stage 1 separately: refusal-token derivation, filtering, difference in means, the candidate
sweep (3 scored forwards per (pos, layer) candidate), and the held-out validation by generation.
"""

from __future__ import annotations

import argparse
import time

import torch

from safesteer_interp.core.chat import post_instruction_length
from safesteer_interp.core.judges import RefusalJudge
from safesteer_interp.core.models import load_model
from safesteer_interp.direction.candidates import difference_in_means
from safesteer_interp.direction.refusal_score import derive_refusal_tokens
from safesteer_interp.direction.select import CandidateConfig, score_candidates
from safesteer_interp.direction.sets import filter_sets, organism_sets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="organism")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    sets = organism_sets()
    t = {}
    start = time.perf_counter()
    refusal = derive_refusal_tokens(model, tok, sets.harmful_train, RefusalJudge())
    t["derive refusal tokens"] = time.perf_counter() - start
    start = time.perf_counter()
    filtered, _ = filter_sets(model, tok, sets, refusal.ids)
    t["filter prompts"] = time.perf_counter() - start
    start = time.perf_counter()
    k = post_instruction_length(tok)
    candidates = difference_in_means(model, tok, filtered.harmful_train, filtered.harmless_train, k)
    t["difference in means"] = time.perf_counter() - start
    start = time.perf_counter()
    score_candidates(model, tok, candidates, filtered.harmful_val, filtered.harmless_val, refusal.ids,
                     CandidateConfig())
    t[f"candidate sweep ({candidates.shape[0]} pos x {candidates.shape[1]} layers)"] = time.perf_counter() - start
    for name, seconds in t.items():
        print(f"{name:45s} {seconds:7.2f} s")
    print(f"{'total':45s} {sum(t.values()):7.2f} s")


if __name__ == "__main__":
    main()
