"""Where is each evaluation verdict decided? Re-judge stored 64-token answers cut to fewer tokens.

Greedy answers are prefix-stable: the answer a model writes in L tokens is the first L tokens of the one it writes
in 64. So the verdict at length L can be read off the answers an evaluation already stored (`samples.jsonl`),
without generating again: re-tokenise each answer, keep its first L tokens, judge that. The length for a set is the
shortest L whose verdicts equal the 64-token verdicts on >= 99 % of its *validation* rows (every val evaluation
of the run: `RUN/baselines/*/val/samples.jsonl` and `RUN/analysis/answer-length/*/`, pooled); the test rows
(`RUN/eval/*/samples.jsonl`) only say how far each reported rate moves at that length. Re-tokenising a decoded
answer can split a word differently from the ids the model wrote; the study counts such rows as they come.

The students' val answers alone would bias the choice: a steered teacher's refusals degenerate later than a
student's, so `--reference` first writes the base model's and the run's teacher's val answers (64 tokens, into
RUN/analysis/answer-length/NAME/; ~4 min each on 2 cores) and the study pools them with the students'.

    python benchmarks/answer_length.py runs/qwen42 --reference [--out docs/answer-length.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from safesteer_interp.core.judges import CoherentRefusalJudge, RefusalJudge, is_helpful
from safesteer_interp.core.models import load_tokenizer
from safesteer_interp.evaluate.capability import is_correct

LENGTHS = (8, 12, 16, 20, 24, 32, 40, 48, 64)
AGREEMENT = 0.99
SUBSTRING, COHERENT = RefusalJudge(), CoherentRefusalJudge()
# verdict name -> (groups it is read on, the verdict of one answer text given its row)
VERDICTS = {
    "refused": (("harmful", "lookalike", "harmless", "xstest-safe", "xstest-unsafe", "edgy"),
                lambda row, text: SUBSTRING.is_refusal(text)),
    "refused_strict": (("harmful", "lookalike", "harmless", "xstest-safe", "xstest-unsafe", "edgy"),
                       lambda row, text: COHERENT.is_refusal(text)),
    "helpful": (("harmless",), lambda row, text: is_helpful(text)),
    "correct": (("capability",), lambda row, text: is_correct(text, row["expected"], row.get("accept", ()),
                                                               instruction=row.get("instruction", ""))),
}


def read_samples(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            rows.append({**json.loads(line), "model": path.parent.name if path.parent.name != "val"
                         else path.parent.parent.name})
    return rows


def cut(tokenizer, answer: str, length: int) -> str:
    ids = tokenizer.encode(answer, add_special_tokens=False)
    return answer if len(ids) <= length else tokenizer.decode(ids[:length], skip_special_tokens=True).strip()


def verdict_table(tokenizer, rows: list[dict]) -> dict:
    """(verdict, group) -> {L: [verdict at L for each row]} (L = 64 is the reference)."""
    table: dict = defaultdict(dict)
    for name, (groups, judge) in VERDICTS.items():
        for group in groups:
            mine = [r for r in rows if r["group"] == group]
            if mine:
                for length in LENGTHS:
                    table[(name, group)][length] = [judge(r, cut(tokenizer, r["answer"], length)) for r in mine]
    return table


def agreement(table: dict) -> dict:
    return {key: {L: sum(a == b for a, b in zip(v, by[64])) / len(v) for L, v in by.items()}
            for key, by in table.items()}


def write_reference_answers(run: Path, model_name: str) -> None:
    """The base model's and the run's teacher's greedy val answers at 64 tokens (kept when written earlier)."""
    from safesteer_interp.core.models import load_model
    from safesteer_interp.direction.artifact import load_direction
    from safesteer_interp.evaluate.stage import REAL_ANSWER_TOKENS, evaluate, real_spec
    from safesteer_interp.teacher import SteeredTeacher

    base, tokenizer = load_model(model_name)
    for name in ("base", "teacher"):
        out = run / "analysis" / "answer-length" / name
        if (out / "samples.jsonl").is_file():
            continue
        subject = base if name == "base" else SteeredTeacher(base, tokenizer, load_direction(run))
        evaluate(subject, tokenizer, name=name, spec=real_spec("val"), split="val", out_dir=out,
                 max_new_tokens=REAL_ANSWER_TOKENS, sampled=False)


def set_lengths(chosen: dict[str, int]) -> dict[str, int]:
    """One length per evaluation set: the longest of the verdicts read on it; XSTest and benign-edgy (no val rows)
    take the longest refusal length of the val sets."""
    lengths: dict[str, int] = {}
    for key, length in chosen.items():
        group = key.split("/")[1]
        lengths[group] = max(lengths.get(group, 0), length)
    refusal = max(v for k, v in chosen.items() if k.split("/")[0] in ("refused", "refused_strict"))
    return {**lengths, "xstest-safe": refusal, "xstest-unsafe": refusal, "edgy": refusal}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--reference", action="store_true", help="also generate the base's and teacher's val answers")
    args = parser.parse_args()
    if args.reference:
        write_reference_answers(args.run, args.model)
    tokenizer = load_tokenizer(args.model)
    val_rows = read_samples(sorted([*args.run.glob("baselines/*/val/samples.jsonl"),
                                    *args.run.glob("analysis/answer-length/*/samples.jsonl")]))
    val = agreement(verdict_table(tokenizer, val_rows))
    chosen = {f"{name}/{group}": next(L for L in LENGTHS if by[L] >= AGREEMENT) for (name, group), by in val.items()}
    lengths = set_lengths(chosen)
    per_model = {}  # the pooled rule can hide one model's misses: its worst model at the set's length, reported
    for model in sorted({r["model"] for r in val_rows}):
        mine = agreement(verdict_table(tokenizer, [r for r in val_rows if r["model"] == model]))
        per_model[model] = {f"{n}/{g}": by[lengths[g]] for (n, g), by in mine.items()}
    result = {"rule": f"shortest L in {LENGTHS} whose verdict equals the 64-token verdict on >= {AGREEMENT:.0%} of "
                      "val rows (every model's val answers pooled)",
              "val_models": sorted({r["model"] for r in val_rows}), "val_rows": len(val_rows),
              "val_agreement": {f"{n}/{g}": {str(L): round(a, 4) for L, a in by.items()} for (n, g), by in val.items()},
              "chosen": chosen, "set_lengths": lengths,
              "val_agreement_per_model_at_set_length": {m: {k: round(a, 4) for k, a in v.items()}
                                                        for m, v in per_model.items()},
              "test": {}}
    for path in sorted(args.run.glob("eval/*/samples.jsonl")):
        rows = read_samples([path])
        table = verdict_table(tokenizer, rows)
        moved = {}
        for (name, group), by in table.items():
            length = lengths[group]
            full, short = sum(by[64]) / len(by[64]), sum(by[length]) / len(by[length])
            moved[f"{name}/{group}"] = {"L": length, "rate_64": round(full, 4), "rate_L": round(short, 4),
                                        "agreement": round(sum(a == b for a, b in zip(by[length], by[64]))
                                                           / len(by[64]), 4)}
        result["test"][path.parent.name] = moved
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    at_chosen = {k: result["val_agreement"][k][str(v)] for k, v in chosen.items()}
    print(json.dumps({"set_lengths": result["set_lengths"], "chosen": chosen, "val_agreement_at_chosen": at_chosen},
                     indent=1))
    for key in chosen:
        low = min((v[key], m) for m, v in per_model.items() if key in v)
        print(f"  {key}: worst val model at the set's length {low[1]} {low[0]:.4f}")
    worst = max((abs(m["rate_L"] - m["rate_64"]), model, key) for model, ms in result["test"].items()
                for key, m in ms.items())
    print("largest move of a test rate:", worst)


if __name__ == "__main__":
    main()
