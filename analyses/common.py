"""What every analysis of a run needs: the base model, the trained student, the teacher, S, prompts, and rollouts.

`load_inputs(run)` opens the run's artifacts once; `score(...)` samples answers from one model and teacher-forces
the *same* tokens through the student, the steered teacher and the base model, so every per-position comparison
is between distributions over one shared prefix. `Writer` puts PNG/HTML/JSON into `RUN/analysis/<name>/`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: analyses run on headless machines and inside CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from jaxtyping import Bool, Float, Int  # noqa: E402
from torch import Tensor  # noqa: E402

from safesteer_interp.core.artifacts import atomic_path, read_json, read_jsonl, write_json, write_jsonl  # noqa: E402
from safesteer_interp.core.models import is_organism, load_model  # noqa: E402
from safesteer_interp.core.scoring import answer_logprobs  # noqa: E402
from safesteer_interp.direction.artifact import load_direction  # noqa: E402
from safesteer_interp.distill.rollout import sample_rollout  # noqa: E402
from safesteer_interp.errors import SafeSteerError  # noqa: E402
from safesteer_interp.organism import world  # noqa: E402
from safesteer_interp.teacher import SteeredTeacher  # noqa: E402
from safesteer_interp.tokens.artifact import load_safety_tokens  # noqa: E402

HARMFUL_GROUPS = ("gap", "refused", "harmful")  # the organism's harmful requests (complied-with first: the safety
# gap), then a real model's (its held-out HarmBench behaviours)
HARMLESS_GROUPS = ("harmless",)


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class RunInputs:
    """The pieces of a finished (or partly finished) run that analyses read."""

    run: Path
    model_spec: str
    base: object  # the frozen base model; the teacher is this model with steering on
    tokenizer: object
    student: object | None  # RUN/train/model, or None before training
    direction: object  # safesteer_interp.direction.artifact.Direction
    safety_ids: Int[Tensor, " k"]
    prompts: dict[str, list[str]] = field(default_factory=dict)  # "harmful" / "harmless" -> instructions

    def teacher(self):
        return SteeredTeacher(self.base, self.tokenizer, self.direction)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.convert_ids_to_tokens(int(i)) for i in ids]


def run_model_spec(run: Path, model: str | None) -> str:
    if model is not None:
        return model
    config = run / "run_config.json"
    if config.is_file():
        return read_json(config, "run config").get("model", "organism")
    direction_meta = run / "direction" / "metadata.json"
    if direction_meta.is_file():
        return read_json(direction_meta, "direction metadata").get("model", "organism")
    raise SafeSteerError(f"{run} has no run_config.json: pass --model to name the base model of this run")


def run_prompts(run: Path, model_spec: str, n: int, seed: int = 0) -> dict[str, list[str]]:
    """Held-out harmful and harmless instructions: the run's evaluation samples, else the organism's test split."""
    groups: dict[str, list[str]] = {"harmful": [], "harmless": []}
    samples = run / "eval" / "base" / "samples.jsonl"
    if samples.is_file():
        for row in read_jsonl(samples, "base evaluation samples"):
            key = ("harmful" if row.get("group") in HARMFUL_GROUPS else
                   "harmless" if row.get("group") in HARMLESS_GROUPS else None)
            if key and row.get("prompt") not in groups[key]:
                groups[key].append(row["prompt"])
    elif not is_organism(model_spec):
        raise SafeSteerError(f"{samples} is missing and '{model_spec}' is not the organism: run the eval stage "
                             "first so the analyses know which held-out prompts to use")
    else:
        for key, names in (("harmful", HARMFUL_GROUPS), ("harmless", HARMLESS_GROUPS)):
            groups[key] = [p for g in names for p in world.prompts(g, "test")]
    rng = random.Random(seed)
    for key, items in groups.items():
        if not items:
            raise SafeSteerError(f"no {key} prompts found for {run}; rerun the eval stage")
        groups[key] = rng.sample(items, min(n, len(items)))  # a seeded sample: the same prompts on every call
    return groups


def load_inputs(run: str | Path, *, model: str | None = None, n_prompts: int = 8, seed: int = 0,
                student: str | Path | None = None) -> RunInputs:
    """Open a run folder: base model (from run_config.json unless `model`), student (RUN/train/model), direction, S."""
    run = Path(run)
    if not run.is_dir():
        raise SafeSteerError(f"run folder {run} does not exist; pass a folder written by `safesteer-interp run`")
    spec = run_model_spec(run, model)
    direction, safety_ids = load_direction(run), load_safety_tokens(run)
    base, tokenizer = load_model(spec)
    student_path = Path(student) if student is not None else run / "train" / "model"
    trained = load_model(str(student_path))[0] if (student_path / "config.json").is_file() else None
    return RunInputs(run, spec, base, tokenizer, trained, direction, safety_ids,
                     run_prompts(run, spec, n_prompts, seed))


# ----------------------------------------------------------------------------------------------- rollouts
@dataclass(frozen=True)
class Scored:
    """Sampled answers and three models' next-token log-probs at every answer position (same tokens for all)."""

    answers: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]  # generated tokens up to and including the first EOS
    student: Float[Tensor, "batch pos vocab"]
    teacher: Float[Tensor, "batch pos vocab"]
    base: Float[Tensor, "batch pos vocab"]
    prompts: list[str]  # one per row
    rollout: object = None  # the safesteer_interp.core.generation.Generation that was scored (prompt + answer columns)


@torch.no_grad()
def score(inputs: RunInputs, instructions: Sequence[str], *, sampler: str = "student", samples: int = 2,
          max_new_tokens: int = 24, seed: int = 0) -> Scored:
    """Sample from `sampler` ('student' or 'base'), then score the same tokens with student, teacher and base.

    Before training ('student' absent) the student *is* the base model, as at step 0 of distillation.
    """
    student = inputs.student if inputs.student is not None else inputs.base
    source = student if sampler == "student" else inputs.base
    rollout = sample_rollout(source, inputs.tokenizer, list(instructions), samples=samples,
                             max_new_tokens=max_new_tokens, seed=seed)
    teacher = inputs.teacher()
    with teacher.active(teacher.scoring_positions(rollout.sequences, rollout.prompt_length)):
        teacher_logp = answer_logprobs(inputs.base, rollout)
    return Scored(rollout.answers, rollout.answer_mask, answer_logprobs(student, rollout), teacher_logp,
                  answer_logprobs(inputs.base, rollout),
                  [instructions[int(i)] for i in rollout.prompt_index], rollout)


def score_groups(inputs: RunInputs, *, samples: int = 2, max_new_tokens: int = 24,
                 seed: int = 0) -> dict[str, Scored]:
    """Student rollouts to the harmful and the harmless prompts, each scored by student, teacher and base."""
    return {g: score(inputs, inputs.prompts[g], samples=samples, max_new_tokens=max_new_tokens, seed=seed)
            for g in ("harmful", "harmless")}


# ----------------------------------------------------------------------------------------------- output
class Writer:
    """Files of one analysis in RUN/analysis/<name>/, written atomically; remembers what it wrote."""

    def __init__(self, run: str | Path, name: str):
        self.name, self.folder, self.files = name, Path(run) / "analysis" / name, []
        self.folder.mkdir(parents=True, exist_ok=True)

    def json(self, filename: str, obj) -> Path:
        return self._remember(write_json(self.folder / filename, obj))

    def jsonl(self, filename: str, records) -> Path:
        return self._remember(write_jsonl(self.folder / filename, records))

    def text(self, filename: str, text: str) -> Path:
        with atomic_path(self.folder / filename) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self._remember(self.folder / filename)

    def figure(self, filename: str, fig) -> Path:
        with atomic_path(self.folder / filename) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return self._remember(self.folder / filename)

    def _remember(self, path: Path) -> Path:
        self.files.append(str(path.relative_to(self.folder.parent.parent)))
        return path


def as_float(x) -> float | None:
    """A JSON-safe float (NaN -> None), rounded so artifacts stay readable."""
    value = float(x)
    return None if value != value else round(value, 6)
