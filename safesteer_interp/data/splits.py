"""A real model's run splits: which harmful requests train, which choose, which are held out for the report.

HarmBench's 159 standard test behaviours are cut, by a seeded draw, into a held-out set (100) that no stage sees and
the training prompts (the rest); HarmBench's 41 val behaviours make every choice; our benign sets keep their own
splits. `run` writes the lists into RUN/splits.json once, and every stage reads them from there.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from safesteer_interp.core.artifacts import read_json, write_json, write_jsonl
from safesteer_interp.data.prompts import read_instructions
from safesteer_interp.data.sources import REGISTRY, load_source
from safesteer_interp.errors import SafeSteerError

HELD_OUT = 100  # HarmBench test standard behaviours kept for the report (of 159)
SPLITS_FILE = "splits.json"


@dataclass(frozen=True)
class RunSplits:
    """Prompt lists of one real-model run, with the seed that drew them."""

    seed: int
    harmful_train: list[str]  # HarmBench test minus the held-out draw: direction means and distillation prompts
    harmful_val: list[str]  # HarmBench val: every choice (direction, coefficient, positions, tokens)
    held_out: list[dict]  # {instruction, category, BehaviorID}: evaluation only
    harmless_train: list[str]
    harmless_val: list[str]

    def held_out_file(self, run: str | Path) -> Path:
        """The held-out behaviours as a JSONL file that `eval --harmful` reads (instruction, category)."""
        return write_jsonl(Path(run) / "splits" / "harmbench_held_out.jsonl", self.held_out)


def draw_splits(seed: int = 42, held_out: int = HELD_OUT) -> RunSplits:
    """The seeded cut of HarmBench test into held-out and training behaviours (sorted by BehaviorID first, so the
    draw does not depend on file order), plus the fixed val and benign splits."""
    test, _ = load_source(REGISTRY["harmbench-test"])
    if not 0 < held_out < len(test):
        raise SafeSteerError(f"held-out size {held_out} must lie between 1 and {len(test) - 1}")
    rows = sorted(test, key=lambda row: row["BehaviorID"])
    random.Random(seed).shuffle(rows)
    kept = [{"instruction": r["instruction"], "category": r["category"], "BehaviorID": r["BehaviorID"]}
            for r in rows[:held_out]]
    return RunSplits(seed, [r["instruction"] for r in rows[held_out:]], read_instructions("harmbench-val"), kept,
                     read_instructions("harmless-train"), read_instructions("harmless-val"))


def run_splits(run: str | Path, seed: int) -> RunSplits:
    """RUN/splits.json, drawn and written on first use; a run resumed later reads the very same lists."""
    path = Path(run) / SPLITS_FILE
    if path.is_file():
        stored = read_json(path, "run splits")
        try:
            splits = RunSplits(**stored)
        except TypeError as err:
            raise SafeSteerError(f"{path} is not a splits file of this version ({err}); start a new run folder") \
                from None
        if splits.seed != seed:
            raise SafeSteerError(f"{path} was drawn with seed {splits.seed}, not {seed}; use a new run folder")
        return splits
    splits = draw_splits(seed)
    write_json(path, asdict(splits))
    return splits


__all__ = ["HELD_OUT", "RunSplits", "draw_splits", "run_splits"]
