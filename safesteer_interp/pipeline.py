"""The main job: direction -> tokens -> train -> eval -> report in one run folder, resumable stage by stage.

Each stage writes RUN/<stage>/done.json last (atomically) with its settings and timing; a stage whose marker exists
is not recomputed. Deleting a stage folder re-runs it and everything after it, since later stages depend on it.
Baselines train into RUN/baselines/<name>/ with the same prompts, seeds and step budget as SafeSteer.
On a real model the prompt lists come from RUN/splits.json (HarmBench train / val / held-out, `data.splits`).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from safesteer_interp.core.artifacts import read_json, write_json
from safesteer_interp.core.judges import CoherentRefusalJudge
from safesteer_interp.core.models import is_organism, load_model, resolve_model_path
from safesteer_interp.core.progress import log_ticks
from safesteer_interp.data.splits import RunSplits, run_splits
from safesteer_interp.direction.artifact import load_direction
from safesteer_interp.direction.sets import InstructionSets, draw, same_form
from safesteer_interp.direction.stage import direction_config, find_direction, run_direction
from safesteer_interp.distill.config import DistillConfig
from safesteer_interp.distill.deepen import deep_inputs
from safesteer_interp.distill.gated import contrast_prompts, gated_teacher, run_gate
from safesteer_interp.distill.null_space import null_space_teacher, run_null_space
from safesteer_interp.distill.sft import sft
from safesteer_interp.distill.trainer import default_prompts, distill
from safesteer_interp.distill.variants import SAFESTEER, VARIANTS, Variant
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.evaluate.stage import REAL_ANSWER_TOKENS, REASONING_TOKENS, EvalSpec, answer_tokens, evaluate_run
from safesteer_interp.organism.world import evaluation_set
from safesteer_interp.report.build import build_report
from safesteer_interp.teacher import SteeredTeacher
from safesteer_interp.tokens.artifact import load_safety_tokens
from safesteer_interp.tokens.stage import default_selection_prompts, run_tokens, token_configs

STAGES = ("direction", "tokens", "train", "eval", "report")

ORGANISM_DIRECTION = {"kl_max": 1.5, "positions": "auto"}  # see RunConfig.direction
# Stage 2 on a real vocabulary: the reference's vote (K=50, K'=200) elects rare tokens with huge log-ratios that carry
# a fraction of a percent of the teacher's push (each record votes at every position; the refusal opener wins only
# at the first). The Δ-weighted mass ranking keeps the tokens the teacher actually moves probability onto. Chosen on
# the validation records of RUN/tokens/methods.json (docs/qwen.md); `--method vote --k 50` is the reference.
REAL_TOKENS = {"method": "mass", "k": 20}
# The LoRA learning rate on a real model (`run` without --lr). The organism's 2e-3 breaks Qwen2.5-Coder-0.5B-Instruct
# within 5 steps (full-vocabulary KL to the base 0.43 -> 8.8 nats, answers 30 -> 3 tokens); chosen on HarmBench val
# and harmless val by a short sweep (docs/qwen.md).
REAL_LR = 2e-4


@dataclass
class RunConfig:
    model: str = "organism"
    seed: int = 42
    # True: every baseline of the model (`--baselines`); a list: those named (`--baseline NAME`). Naming more on a
    # finished run adds their rows: only the new baselines train, only the new models are evaluated.
    baselines: bool | list[str] = False
    # The teacher's steering coefficient: "auto" (the organism default) takes the smallest coefficient of
    # COEFF_GRID that makes >= 90 % of harmless *validation* prompts refuse; 1.0 is the reference's. On the organism
    # it decides whether the compliance opener enters S, and with it what the published loss can do
    # (docs/organism.md, "What the published loss can and cannot do").
    coeff: float | str = "auto"
    k: int | str = 50  # |S| (the reference's K) or "auto"
    method: str = "vote"  # how S is elected: the reference's "vote" (or "mean"), or "mass" (REAL_TOKENS)
    horizon: int = 5
    samples: int = 8  # rollouts per prompt (distillation) and trajectories per prompt (token selection)
    n_prompts: int = 100
    max_new_tokens: int = 32
    lr: float | None = None
    prompts_per_step: int = 4
    eval_split: str = "test"
    eval_per_group: int = 160  # held-out requests per group (the organism's evaluation set)
    eval_per_task: int = 48  # held-out items per capability task and template kind
    eval_n: int | None = None  # real models: only the first N of each evaluation set (smoke runs; None = all)
    eval_tokens: int = REAL_ANSWER_TOKENS  # real models: the evaluation's answer length (fewer only in smoke runs)
    eval_reasoning_tokens: int = REASONING_TOKENS  # real models: GSM8K-100's chain-of-thought answer length
    # real models: "fixed" (every set at eval_tokens: every run started before issue 35) or "measured" (each set cut
    # where its verdicts are decided, `evaluate.stage.MEASURED_ANSWER_TOKENS`; run_config's default for a new run)
    eval_lengths: str = "fixed"
    # extra DirectionConfig fields, plus prune / kl_max / induce_min. The organism preset relaxes the reference's
    # kl_max 0.1, at which no candidate survives: harmless prompts sit far out along r, so ablation moves them where
    # training never went and changes their first token while the answers stay helpful (organism/README.md, v25/v26).
    # It also chooses the teacher's steering positions on validation ("auto"): the reference's all-position addition
    # babbles on the organism (docs/organism.md). `run --teacher-positions all` restores the reference's teacher.
    direction: dict = field(default_factory=lambda: dict(ORGANISM_DIRECTION))
    # extra DistillConfig fields. Epochs stay at the reference's 1: more epochs pull every safety token towards
    # p_teacher / e and lower refusal on validation (docs/organism.md, "What the published loss can and cannot do").
    distill: dict = field(default_factory=dict)


def run_config(model: str = "organism", *, teacher_positions: str = "auto", method: str | None = None,
               k: int | str | None = None, lr: float | None = None, **fields) -> RunConfig:
    """A RunConfig with the defaults of the model's kind, as `safesteer-interp run` builds it (use this from Python:
    `RunConfig()`'s own defaults are the organism's). The organism: ORGANISM_DIRECTION, the reference's vote with
    K = 50, the trainer's LoRA learning rate. A real model: the reference's direction filters, REAL_TOKENS, REAL_LR.
    `fields`: any other RunConfig field (seed, baselines, ...)."""
    organism = is_organism(model)
    if not organism:
        fields.setdefault("eval_lengths", "measured")
    direction = {**(ORGANISM_DIRECTION if organism else {}), "positions": teacher_positions}
    tokens = {"method": "vote", "k": 50} if organism else dict(REAL_TOKENS)
    tokens.update({"method": method} if method else {}, **({"k": k} if k is not None else {}))
    return RunConfig(model=model, direction=direction, k=tokens["k"], method=tokens["method"],
                     lr=lr if lr is not None or organism else REAL_LR, **fields)


def marker(run: Path, stage: str) -> Path:
    return run / stage / "done.json"


def stage_status(run: str | Path) -> dict[str, bool]:
    return {stage: marker(Path(run), stage).is_file() for stage in STAGES}


def run_pipeline(out: str | Path, cfg: RunConfig, log: Callable[[str], None] = print,
                 until: str | None = None) -> dict:
    """Run every stage not yet done (and every stage after one that had to run), up to and including `until` (None:
    all). Returns RUN/summary.json, or {} when the run stops before the evaluation wrote it."""
    if until is not None and until not in STAGES:
        raise SafeSteerError(f"--until {until!r} is not a stage; pick one of {', '.join(STAGES)}")
    resolve_model_path(cfg.model)  # a bad model spec fails before anything is written
    baselines(cfg)  # an unknown --baseline name too
    answer_tokens(cfg.eval_lengths)  # and a bad answer-length choice
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    added = check_same_config(run, cfg)
    if added and marker(run, "train").is_file():  # rows added to a trained run: train them, evaluate them
        train_baselines(run, cfg, log, added)
        marker(run, "eval").unlink(missing_ok=True)  # the models evaluated earlier are reused (evaluate_run)
    stages = {"direction": stage_direction, "tokens": stage_tokens, "train": stage_train, "eval": stage_eval,
              "report": stage_report}
    stale = False
    for stage in STAGES:
        if not stale and marker(run, stage).is_file():
            log(f"[{stage}] done earlier, reused ({marker(run, stage)})")
            if stage == until:  # a rerun with the same --until stops there too
                break
            continue
        stale = True  # everything downstream depends on this stage's output
        marker(run, stage).unlink(missing_ok=True)
        log(f"[{stage}] running")
        started = time.perf_counter()
        info = stages[stage](run, cfg, log) or {}
        write_json(marker(run, stage), {"stage": stage, "seconds": round(time.perf_counter() - started, 2),
                                        "config": asdict(cfg), **info})
        log(f"[{stage}] finished in {time.perf_counter() - started:.1f} s")
        if stage == until:
            break
    if not (run / "summary.json").is_file() and until is not None:
        return {}
    return read_json(run / "summary.json", "run summary")


def check_same_config(run: Path, cfg: RunConfig) -> list[str]:
    """A run folder belongs to one configuration: resuming with other settings would mix results. Only the baselines
    may grow (rows added to a run); the config on disk then names them all, and the names new to the run come back."""
    path, new = run / "run_config.json", json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as on disk
    if not path.is_file():
        write_json(path, asdict(cfg))
        return []
    # a setting added after the run was started has its default there
    old = {**json.loads(json.dumps(asdict(RunConfig()))), **read_json(path, "run config")}
    diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v and k != "baselines")
    if diff:
        raise SafeSteerError(f"{run} was started with other settings ({diff}); use a new --out folder or the "
                             "same settings")
    had = baselines(replace(cfg, baselines=old.get("baselines", False)))
    added = [name for name in baselines(cfg) if name not in had]
    if added:
        names = list(had) + added
        write_json(path, {**old, "baselines": True if names == list(baselines(replace(cfg, baselines=True)))
                          else names})
    return added


def _load(cfg: RunConfig):
    return load_model(cfg.model)


# ----------------------------------------------------------------------------------------------- real models
def real_sets(splits: RunSplits, n_train: int, n_val: int, seed: int) -> InstructionSets:
    """Stage 1's sets on a real model: HarmBench training behaviours against our harmless train requests, every
    choice on HarmBench val and harmless val (also its validation block); nothing from the held-out behaviours."""
    rng = random.Random(seed)
    harmful_val, harmless_val = draw(splits.harmful_val, n_val, rng), draw(splits.harmless_val, n_val, rng)
    harmless_train = same_form(splits.harmless_train, splits.harmful_train)  # tasks against tasks (`same_form`)
    return InstructionSets(draw(splits.harmful_train, n_train, rng), draw(harmless_train, n_train, rng),
                           harmful_val, harmless_val, held_out={"harmful": harmful_val, "harmless": harmless_val})


def real_eval_spec(run: Path, splits: RunSplits, n: int | None = None,
                   reasoning_tokens: int = REASONING_TOKENS, lengths: str = "fixed") -> EvalSpec:
    """The held-out HarmBench behaviours and the test splits of our look-alike, harmless and capability sets, beside
    the public benchmarks (XSTest from its local copy, rho's benign-edgy requests, GSM8K-100); lengths: 'fixed' or
    'measured' answer lengths (`evaluate.stage.answer_tokens`)."""
    return EvalSpec(harmful=str(splits.held_out_file(run)), lookalike="lookalike-test", harmless="harmless-test",
                    capability="capability-test", n=n, reasoning_tokens=reasoning_tokens,
                    answer_tokens=answer_tokens(lengths))


def resumed_lengths(run: str | Path) -> str | None:
    """The answer lengths of a run folder started earlier ('fixed' when it predates the setting); None: a new run."""
    path = Path(run) / "run_config.json"
    return read_json(path, "run config").get("eval_lengths", "fixed") if path.is_file() else None


def training_prompts(run: Path, cfg: RunConfig) -> list[str]:
    if is_organism(cfg.model):
        return default_prompts(cfg.model, n=cfg.n_prompts, seed=cfg.seed)
    return run_splits(run, cfg.seed).harmful_train[:cfg.n_prompts]


# ----------------------------------------------------------------------------------------------- stages
def stage_direction(run: Path, cfg: RunConfig, log) -> dict:
    shutil.rmtree(run / "direction", ignore_errors=True)
    model, tok = _load(cfg)
    config = direction_config(cfg.seed, cfg.coeff, **cfg.direction)
    if is_organism(cfg.model):
        meta = run_direction(run, model, tok, config, model_name=cfg.model)
    else:
        sets = real_sets(run_splits(run, cfg.seed), config.n_train, config.n_val, cfg.seed)
        # the coherent judge throughout: a steered real model can loop "I'm sorry I'm sorry", which a substring
        # judge counts as refusal, and the coefficient sweep and position check would pick the babbling teacher
        meta = find_direction(model, tok, sets, run, config, CoherentRefusalJudge(), model_name=cfg.model,
                              progress=log_ticks(log, "scoring candidates"), log=log)
    numbers = {k: v for k, v in meta["validation"].items() if isinstance(v, int | float)}
    log(f"  layer {meta['layer']}, pos {meta['pos']}, coeff {meta['coeff']}, teacher positions {meta['positions']}"
        f" ({meta['positions_requested']}), held-out: {numbers}")
    return {"layer": meta["layer"], "pos": meta["pos"]}


def stage_tokens(run: Path, cfg: RunConfig, log) -> dict:
    shutil.rmtree(run / "tokens", ignore_errors=True)
    model, tok = _load(cfg)
    contrast, vote = token_configs(horizon=cfg.horizon, samples=cfg.samples, seed=cfg.seed, k=cfg.k,
                                   method=cfg.method)
    # batches of the selection, then of its stability check with the next seed
    batches = 2 * math.ceil(len(default_selection_prompts(run)) / contrast.batch_size)
    tick = log_ticks(log, "safety-token contrast (batches)")(batches)
    result = run_tokens(run, model, tok, contrast=contrast, vote=vote, progress=lambda _prompts: tick())
    tokens = result.explanations
    log(f"  |S| = {len(tokens)}: {', '.join(t['token'] for t in tokens[:8])}{' ...' if len(tokens) > 8 else ''}")
    return {"n_tokens": len(tokens), "stability": result.stability and "see tokens.json"}


def distill_config(cfg: RunConfig, vocab: str = "safe", restrict: str = "paper", divergence: str = "reverse"):
    return DistillConfig(vocab=vocab, restrict=restrict, divergence=divergence, samples=cfg.samples,
                         max_new_tokens=cfg.max_new_tokens, lr=cfg.lr, prompts_per_step=cfg.prompts_per_step,
                         top_k=cfg.k if isinstance(cfg.k, int) else 50, seed=cfg.seed, **cfg.distill)


def anchor_prompts(run: Path, cfg: RunConfig) -> list[str]:
    """The anchor baseline's general data: harmless training prompts (never an evaluation prompt)."""
    if is_organism(cfg.model):
        return default_prompts(cfg.model, n=cfg.n_prompts, seed=cfg.seed, group="harmless")
    return run_splits(run, cfg.seed).harmless_train


def baselines(cfg: RunConfig) -> dict[str, Variant]:
    """The baselines a run trains (`distill.variants.VARIANTS`): every one the model kind runs (--baselines) or those
    named (--baseline NAME)."""
    if not cfg.baselines:
        return {}
    kind = "organism" if is_organism(cfg.model) else "real"
    if cfg.baselines is True:
        return {name: v for name, v in VARIANTS.items() if kind in v.runs_on}
    unknown = [name for name in cfg.baselines if name not in VARIANTS]
    if unknown:
        raise SafeSteerError(f"unknown baseline {unknown[0]!r}; pick from {', '.join(VARIANTS)}")
    real_only = [name for name in cfg.baselines if VARIANTS[name].needs_real and kind == "organism"]
    if real_only:
        raise SafeSteerError(f"baseline {real_only[0]!r} needs a real-model run (HarmBench val chooses its "
                             "teacher); use --model qwen2.5-coder-0.5b-instruct")
    return {name: VARIANTS[name] for name in cfg.baselines}


def train_one(run: Path, target: Path, cfg: RunConfig, variant: Variant, resume: bool,
              log: Callable[[str], None] = print) -> dict:
    """Train one student into target/train/ (SafeSteer itself: target = run)."""
    model, tok = _load(cfg)
    direction = load_direction(run)
    prompts = training_prompts(run, cfg)
    dcfg = distill_config(cfg, variant.vocab, variant.restrict, variant.divergence)
    if variant.trainer == "sft":
        return sft(target, model, tok, SteeredTeacher(model, tok, direction), prompts, dcfg)
    prefills: list[str] = []
    also: tuple = ()
    described = variant.loss
    if variant.deep:  # the gated recovering teacher is chosen on prefilled val as safesteer-recover's, ungated
        rule = "prefill-answer" if variant.teacher_rule == "prefill-answer-gated" else variant.teacher_rule
        direction, prefills, also = deep_inputs(target, model, tok, direction, prompts,
                                                run_splits(run, cfg.seed).harmful_val, cfg.seed, log, rule=rule)
        described += (f" + deep teacher (coeff {direction.coeff}"
                      + "".join(f", refusing-answer direction at layer {d.layer} x {d.coeff}" for d in also)
                      + ") + prefilled answers")
    gate = None
    if variant.gated:
        gate = run_gate(run, model, tok, cfg.seed, log, variant.gate_kind).row_gate()
        kind = "" if variant.gate_kind == "task" else f"{variant.gate_kind} gate: "  # task rows keep their identity
        described += f" + gated teacher ({kind}layer {gate.layer}, threshold {gate.threshold:.4g})"
    if variant.mapped:
        steering = run_null_space(run, model, tok, cfg.seed, log)
        gate = steering.row_map()
        described += f" + null-space teacher (layer {steering.layer}, ratio {steering.ratio}, ridge {steering.ridge:g})"
    if variant.benign:  # a contrast set: the benign prompts join the harmful ones (more prompts, more steps)
        benign = contrast_prompts(run, cfg.seed, variant.benign)
        prompts = prompts + benign
        prefills = prefills + [""] * len(benign) if prefills else prefills  # benign answers start plainly
    safety = load_safety_tokens(run) if variant.vocab == "safe" else None
    anchors = anchor_prompts(run, cfg) if variant.anchor_weight > 0 else []
    dcfg.anchor_weight = variant.anchor_weight
    return distill(target, model, tok, direction, prompts, dcfg, safety_ids=safety, resume=resume,
                   anchor_prompts=anchors, prefills=prefills, teacher_also=also, teacher_gate=gate,
                   provenance={"run": str(run), "variant": described},
                   log=log)


def stage_train(run: Path, cfg: RunConfig, log) -> dict:
    summary = {}
    resume = (run / "train" / "checkpoints").is_dir()  # an interrupted training continues exactly
    summary["safesteer"] = train_one(run, run, cfg, SAFESTEER, resume, log)
    if summary["safesteer"].get("openers_note"):
        log(f"  {summary['safesteer']['openers_note']}")
    summary.update(train_baselines(run, cfg, log, list(baselines(cfg))))
    log("  trained: " + ", ".join(summary))
    return {"trained": list(summary)}


def train_baselines(run: Path, cfg: RunConfig, log, names: list[str]) -> dict:
    """Train the named baselines into RUN/baselines/NAME/; one finished earlier (an interrupted stage) is kept."""
    summary = {}
    for name in names:
        target = run / "baselines" / name
        if (target / "train" / "model" / "config.json").is_file():
            continue
        started = time.perf_counter()
        summary[name] = train_one(run, target, cfg, VARIANTS[name], (target / "train" / "checkpoints").is_dir(),
                                  log)
        log(f"  {name} trained in {time.perf_counter() - started:.0f} s")
    return summary


def stage_eval(run: Path, cfg: RunConfig, log) -> dict:
    base, tok = _load(cfg)
    students = {"safesteer": run / "train" / "model"}
    students.update({name: run / "baselines" / name / "train" / "model" for name in baselines(cfg)})
    if is_organism(cfg.model):
        examples = evaluation_set(cfg.eval_split, per_group=cfg.eval_per_group, per_task=cfg.eval_per_task)
        models = evaluate_run(run, base, tok, students, log, split=cfg.eval_split, examples=examples)
    else:
        spec = real_eval_spec(run, run_splits(run, cfg.seed), cfg.eval_n, cfg.eval_reasoning_tokens,
                              cfg.eval_lengths)
        # a gated variant's teacher gets its own row: is it selective before anything is distilled?
        kinds = sorted({v.gate_kind for v in baselines(cfg).values() if v.gated})
        teachers = {"teacher-gated" + ("" if kind == "task" else f"-{kind}"): gated_teacher(run, base, tok, cfg.seed,
                                                                                           log, kind)
                    for kind in kinds}
        if any(v.mapped for v in baselines(cfg).values()):
            teachers["teacher-null-space"] = null_space_teacher(run, base, tok, cfg.seed, log)
        models = evaluate_run(run, base, tok, students, log, spec=spec, max_new_tokens=cfg.eval_tokens,
                              teachers=teachers)
    return {"models": models}


def stage_report(run: Path, cfg: RunConfig, log) -> dict:
    written = build_report(run)
    log("  " + ", ".join(str(p) for p in written.values()))
    return {"files": {k: str(v) for k, v in written.items()}}


__all__ = ["REAL_LR", "REAL_TOKENS", "STAGES", "RunConfig", "baselines", "resumed_lengths", "run_config",
           "run_pipeline", "stage_status"]
