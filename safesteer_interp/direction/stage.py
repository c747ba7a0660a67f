"""Stage 1 of SafeSteer: find the refusal direction, pick one (pos, layer), and leave explainable artifacts.

`find_direction` reads like the paper: refusal tokens -> keep the prompts the base model already refuses / answers
-> difference in means of resid_pre at every post-instruction position and layer -> score every candidate
(ablation, addition, KL) -> select -> coefficient and positions on validation -> validate on held-out prompts.
An aligned model whose refusal the log-odds filter misreads takes the named *aligned* path, one that refuses (almost)
nothing the *latent* path (`REFUSAL_PATHS`), recorded in metadata.json with why.
Everything lands in RUN/direction/: candidates, direction, scores, heatmaps, logit lens, metadata.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.anatomy import n_layers
from safesteer_interp.core.artifacts import write_json, write_tensors
from safesteer_interp.core.chat import post_instruction_length, post_instruction_tokens
from safesteer_interp.core.generation import GreedyAnswers, generate_answers
from safesteer_interp.core.hooks import Positions, add_to_resid
from safesteer_interp.core.judges import RefusalJudge
from safesteer_interp.core.progress import timed
from safesteer_interp.direction.artifact import Direction, check_positions, direction_dir, save_direction
from safesteer_interp.direction.candidates import difference_in_means
from safesteer_interp.direction.checks import coefficient_sweep, pick_coeff, pick_positions, positions_check, validate
from safesteer_interp.direction.plots import heatmap, logit_lens
from safesteer_interp.direction.refusal_score import (
    NoRefusals,
    RefusalTokens,
    derive_refusal_tokens,
    judge_openers,
    refusal_tokens_from_strings,
)
from safesteer_interp.direction.select import CandidateConfig, SteerScore, score_candidates, select_candidate
from safesteer_interp.direction.sets import (
    MIN_KEPT,
    InstructionSets,
    filter_sets,
    instruction_sets,
    judged_filter,
    unfiltered,
)
from safesteer_interp.errors import SafeSteerError

Progress = Callable[[int], Callable[[], None]]  # given the number of candidates, returns a per-candidate tick

# How stage 1 reads the model's refusals. "reference": the reference's recipe (keep harmful prompts whose refusal
# log-odds > 0), an error when its filter leaves no harmful prompt. "aligned" (named variant, e.g. Qwen2.5-Coder-0.5B-
# Instruct: it refuses half of HarmBench val greedily, yet puts < 0.5 on "I" for most, so the reference's filter kept
# 6/32): prompts filtered by the judge on greedy answers, the reference's ablation ranking with the steering floor
# halfway to the model's own refusal score (`CandidateConfig.induce_calibrated`), scored lazily, coefficient and
# positions chosen on the harmful val prompts the model answers ("gap"). "latent" (named variant, e.g. SmolLM2-135M-
# Instruct: 1 of 159): refusal tokens from the judge's phrases when the model has no refusals to read them from,
# harmful prompts unfiltered, and the candidate that most raises the harmless refusal score wins (there is no refusal
# for ablation to remove). "auto": the reference where its filter keeps >= MIN_KEPT of the harmful prompts, else
# aligned where the greedy answers refuse >= MIN_KEPT of both harmful splits, else latent.
REFUSAL_PATHS = ("auto", "reference", "aligned", "latent")
LAZY_SURVIVORS = 5  # the aligned and latent paths score lazily until this many candidates pass (report context)
# The latent path's steering score: greedy answers to this many harmless val prompts, this long, steered at this
# coefficient (the top of checks.COEFF_GRID: a model that refuses nothing needs more than its mean harmful activation)
LATENT_PROMPTS, LATENT_TOKENS, LATENT_COEFF = 16, 16, 2.0


@dataclass(frozen=True)
class DirectionConfig:
    n_train: int = 128
    n_val: int = 32
    seed: int = 42
    coeff: float | str = 1.0  # a number, or "auto" for the validation sweep over checks.COEFF_GRID
    refusal_tokens: tuple[str, ...] = ()  # override; empty = derive from the model's own refusals
    selection: CandidateConfig = CandidateConfig()
    max_new_tokens: int = 24
    filter_prompts: bool = True  # the reference filters by refusal score; off only for diagnostics and tests
    positions: str = "all"  # where the teacher steers: "all" (reference), "prompt", "last", or "auto" (validation)
    refusal_path: str = "auto"  # see REFUSAL_PATHS

    def __post_init__(self):
        if self.refusal_path not in REFUSAL_PATHS:
            raise SafeSteerError(f"refusal path {self.refusal_path!r} is not one of {', '.join(REFUSAL_PATHS)}")


def direction_config(seed: int = 42, coeff: float | str = 1.0, *, prune: float | None = None,
                     kl_max: float | None = None, induce_min: float | None = None,
                     refusal_tokens: Sequence[str] = (), **fields) -> DirectionConfig:
    """A DirectionConfig from plain values (CLI options, `RunConfig.direction`): the candidate filters go into
    `selection` (None keeps CandidateConfig's default), the refusal tokens into a tuple."""
    filters = {"prune": prune, "kl_max": kl_max, "induce_min": induce_min}
    selection = CandidateConfig(**{name: value for name, value in filters.items() if value is not None})
    return DirectionConfig(seed=seed, coeff=coeff, refusal_tokens=tuple(refusal_tokens), selection=selection,
                           **fields)


# ----------------------------------------------------------------------------------------------- steering API
def add_direction(model, direction: Direction | Tensor, layer: int | None = None, coeff: float | None = None,
                  positions: Positions | str = "all", tokenizer=None) -> AbstractContextManager:
    """Activation addition of a direction: "all" positions (the reference), "prompt", "post-instruction", "last"
    or k (the last k prompt tokens)."""
    vector = direction.vector if isinstance(direction, Direction) else direction
    layer = direction.layer if layer is None and isinstance(direction, Direction) else layer
    coeff = (direction.coeff if isinstance(direction, Direction) else 1.0) if coeff is None else coeff
    if layer is None:
        raise SafeSteerError("add_direction needs a layer (or a Direction that carries one)")
    if positions == "post-instruction":
        if tokenizer is None:
            raise SafeSteerError("positions='post-instruction' needs the tokenizer to find the template tokens")
        positions = post_instruction_length(tokenizer)
    return add_to_resid(model, vector, layer, coeff, positions)


# ----------------------------------------------------------------------------------------------- the stage
def run_direction(out: str | Path, model, tokenizer, config: DirectionConfig, *, model_name: str,
                  harmful: str | None = None, harmless: str | None = None, progress: Progress | None = None,
                  extra: dict | None = None) -> dict:
    """The stage as `safesteer-interp direction` and `run` call it: the model's instruction sets and judges (the
    organism's own, or `harmful` / `harmless` sources), then `find_direction`."""
    sets, coherent = instruction_sets(model_name, config.n_train, config.n_val, config.seed, harmful, harmless)
    return find_direction(model, tokenizer, sets, out, config, RefusalJudge(), model_name=model_name,
                          progress=progress, coherent=coherent, extra=extra)


def find_direction(model, tokenizer, sets: InstructionSets, out: str | Path, config: DirectionConfig, judge, *,
                   model_name: str, progress: Progress | None = None, coherent: Callable[[str], bool] | None = None,
                   extra: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Run stage 1 end to end and write RUN/direction/. Returns metadata.json's content; `extra` (e.g. the CLI's
    preset record) is written into it last; `log` hears each step's end and time (metadata's `step_seconds`)."""
    check_positions(config.positions, auto=True)  # before any model work
    start, folder, steps = time.perf_counter(), direction_dir(out), {}
    folder.mkdir(parents=True, exist_ok=True)
    pos_labels = post_instruction_tokens(tokenizer)
    answers = GreedyAnswers(model, tokenizer, config.max_new_tokens)  # the unedited model's, shared by the steps
    # 1. Refusal tokens, then the prompts the base model already refuses (harmful) or answers (harmless)
    with timed(steps, "refusal_tokens", log):
        refusal = choose_refusal_tokens(model, tokenizer, sets, config, judge, answers)
    with timed(steps, "filter", log):
        filtered, counts, path = filter_prompts(model, tokenizer, sets, refusal, config, coherent or judge.is_refusal,
                                                answers)
    # 2. Candidates r[pos, layer], their scores on validation prompts, and the selected one
    with timed(steps, "candidates", log):
        candidates = candidate_directions(model, tokenizer, filtered, folder)
    selection = path_selection(config.selection, path)
    steer = None if path["path"] != "latent" else latent_steer_score(model, tokenizer, filtered.harmless_val,
                                                                      selection.coeff, judge, coherent)
    with timed(steps, "scoring", log):
        scores = score_all(model, tokenizer, candidates, filtered, refusal.ids, selection, pos_labels, folder,
                           progress, steer)
    p, layer, report = select_and_report(scores, n_layers(model), selection, folder)
    # 3. Steering positions and coefficient, chosen on validation prompts
    direction = Direction(candidates[p, layer].float(), layer, p - len(candidates), **untuned(config, selection))
    with timed(steps, "tuning", log):
        direction, check, sweep = tune(model, tokenizer, direction, filtered, config, judge, coherent)
    with timed(steps, "plots", log):
        write_plots(model, tokenizer, scores, direction, (p, layer), pos_labels, folder)
    write_json(folder / "prompts.json", asdict(filtered))
    # 4. Held-out validation, then the direction and the stage's record, written once
    with timed(steps, "validation", log):
        validation = validate(model, tokenizer, direction, filtered.held_out, judge, config.max_new_tokens, coherent,
                              answers)
    record = {
        "model": model_name, "layer": layer, "pos": direction.pos, "pos_token": pos_labels[p],
        "coeff": direction.coeff, "positions": direction.positions, "positions_requested": config.positions,
        "positions_check": check, "hook": direction.hook,
        "norm": round(float(direction.vector.norm()), 4),
        "candidate_norms": [[round(float(x), 3) for x in row] for row in candidates.norm(dim=-1)],
        "refusal_tokens": asdict(refusal), "refusal_path": path, "filter_counts": counts, "selection": report,
        "coefficient_sweep": sweep, "seed": config.seed, "n_train": config.n_train, "n_val": config.n_val,
        "validation": validation, "seconds": round(time.perf_counter() - start, 2), "step_seconds": steps,
        **(extra or {}),
    }
    return save_direction(out, direction, record)


# ----------------------------------------------------------------------------------------------- its steps
def choose_refusal_tokens(model, tokenizer, sets: InstructionSets, config: DirectionConfig, judge,
                          answers: GreedyAnswers | None = None) -> RefusalTokens:
    """The tokens whose probability is the refusal score: given, or the openers of the model's own refusals (on
    the latent path, of the judge's phrases when the model refused nothing)."""
    if config.refusal_tokens:
        return refusal_tokens_from_strings(tokenizer, config.refusal_tokens)
    try:
        return derive_refusal_tokens(model, tokenizer, sets.harmful_train, judge, answers=answers)
    except NoRefusals:
        if config.refusal_path == "reference":
            raise
        return judge_openers(tokenizer, judge.phrases)


def filter_prompts(model, tokenizer, sets: InstructionSets, refusal: RefusalTokens, config: DirectionConfig,
                   refuses: Callable[[str], bool],
                   answers: GreedyAnswers | None = None) -> tuple[InstructionSets, dict, dict]:
    """The filtered sets, their counts, and which path ran and why ({path, requested, why})."""
    requested = config.refusal_path
    if not config.filter_prompts:
        return *unfiltered(sets), {"path": "unfiltered", "requested": requested, "why": "filter_prompts is off"}
    if requested == "aligned":
        judged = judged_filter(model, tokenizer, sets, refuses, config.max_new_tokens, answers)
        return aligned(*judged, requested, "requested")
    min_kept = {"reference": 0.0, "auto": MIN_KEPT, "latent": math.inf}[requested]
    filtered, counts = filter_sets(model, tokenizer, sets, refusal.ids, min_kept)
    skipped = [name for name, c in counts.items() if c.get("skipped")]
    if requested == "latent":
        why = "requested"
    elif refusal.source == "judge-openers":
        why = "the model refused none of the harmful train prompts (refusal tokens from the judge's phrases)"
    elif skipped:
        why = (f"the reference's filter kept less than {MIN_KEPT:.0%} of "
               + ", ".join(f"{n} ({counts[n]['would_keep']}/{counts[n]['before']})" for n in skipped))
        judged, judged_counts = judged_filter(model, tokenizer, sets, refuses, config.max_new_tokens, answers)
        if all(judged_counts[n]["judged_refusals"] >= MIN_KEPT * judged_counts[n]["before"] for n in skipped) \
                and all(judged_counts[n]["after"] for n in judged_counts):
            return aligned(judged, judged_counts, requested, why)
        why += ", and its greedy answers refuse less than that too"
    else:
        return filtered, counts, {"path": "reference", "requested": requested, "why": "the filter kept enough prompts"}
    return filtered, counts, {"path": "latent", "requested": requested, "why": why}


def aligned(filtered: InstructionSets, counts: dict, requested: str, why: str) -> tuple[InstructionSets, dict, dict]:
    """The aligned path's result from the judged filter's (`sets.judged_filter`), with why it was taken."""
    for name, count in counts.items():
        if not count["after"]:
            raise SafeSteerError(f"the judged filter left no {name} prompts ({count['before']} before); the model "
                                 "does not separate harmful from harmless here — pass --refusal-path latent")
    if why != "requested":
        why += (", although its greedy answers refuse "
                + ", ".join(f"{n} {counts[n]['judged_refusals']}/{counts[n]['before']}"
                            for n in ("harmful_train", "harmful_val"))
                + ": its refusal opener wins greedily with < 0.5 probability, so prompts are filtered by the judge")
    return filtered, counts, {"path": "aligned", "requested": requested, "why": why}


def path_selection(selection: CandidateConfig, path: dict) -> CandidateConfig:
    """The latent path ranks by steering (`latent_steer_score`, at LATENT_COEFF) and scores ablation and KL lazily;
    the aligned path ranks by ablation, lazily, with the steering floor halfway to the model's own refusal score.
    Both pick the same candidate as the whole grid would."""
    if path["path"] == "aligned":
        return replace(selection, induce_calibrated=True, lazy_survivors=selection.lazy_survivors or LAZY_SURVIVORS)
    if path["path"] != "latent":
        return selection
    return replace(selection, rank_by="steering", coeff=LATENT_COEFF,
                   lazy_survivors=selection.lazy_survivors or LAZY_SURVIVORS)


def latent_steer_score(model, tokenizer, harmless_val: Sequence[str], coeff: float, judge,
                       coherent: Callable[[str], bool] | None) -> SteerScore:
    """The latent path's steering score: the share of the first LATENT_PROMPTS harmless validation prompts answered
    with a refusal (the coherent judge where there is one) when +coeff*r is added on the prompt tokens, as the teacher
    will. A model that refuses nothing opens harmless answers with "I" too ("I'm glad ..."), so the first-token
    log-odds of the judge's openers cannot tell a refusal direction from a chatty one."""
    prompts, refuses = list(harmless_val[:LATENT_PROMPTS]), coherent or judge.is_refusal

    def score(vector: Tensor | None, layer: int) -> float:
        steer = nullcontext() if vector is None else add_to_resid(model, vector, layer, coeff, positions="prompt")
        with steer:
            answers = generate_answers(model, tokenizer, prompts, max_new_tokens=LATENT_TOKENS)
        return sum(map(refuses, answers)) / len(answers)
    return score


def candidate_directions(model, tokenizer, sets: InstructionSets, folder: Path) -> Float[Tensor, "pos layer d_model"]:
    """Difference in means of resid_pre at every post-instruction position and layer (candidates.safetensors)."""
    k = post_instruction_length(tokenizer)
    candidates = difference_in_means(model, tokenizer, sets.harmful_train, sets.harmless_train, k)
    write_tensors(folder / "candidates.safetensors", {"candidates": candidates},
                  {"axes": "pos layer d_model", "hook": "resid_pre", "pos": f"last {k} prompt tokens"})
    return candidates


def score_all(model, tokenizer, candidates: Float[Tensor, "pos layer d_model"], sets: InstructionSets,
              refusal_ids: Sequence[int], config: CandidateConfig, pos_labels: Sequence[str], folder: Path,
              progress: Progress | None, steer: SteerScore | None = None) -> dict[str, Tensor]:
    """Ablation, addition and KL scores of every candidate on the validation prompts (scores.json)."""
    tick = progress(len(candidates) * n_layers(model)) if progress else (lambda: None)
    scores = score_candidates(model, tokenizer, candidates, sets.harmful_val, sets.harmless_val, refusal_ids,
                              config, tick, steer)
    write_scores(folder, scores, pos_labels)
    return scores


def select_and_report(scores: dict[str, Tensor], layers: int, config: CandidateConfig,
                      folder: Path) -> tuple[int, int, dict]:
    """(pos index, layer, report) of the selected candidate; selection_report.json is written even when nothing
    survives the filters (the error carries the report)."""
    try:
        p, layer, report = select_candidate(scores, layers, config)
    except SafeSteerError as err:
        write_json(folder / "selection_report.json", getattr(err, "report", {"error": str(err)}))
        raise
    write_json(folder / "selection_report.json", report)
    return p, layer, report


def untuned(config: DirectionConfig, selection: CandidateConfig) -> dict:
    """The coefficient and positions before validation: the configured ones, or where "auto" the steering score's
    coefficient (1.0; the latent path's LATENT_COEFF) and "all" positions."""
    return {"coeff": float(config.coeff) if isinstance(config.coeff, int | float) else selection.coeff,
            "positions": "all" if config.positions == "auto" else config.positions}


def tune(model, tokenizer, direction: Direction, sets: InstructionSets, config: DirectionConfig, judge,
         coherent: Callable[[str], bool] | None) -> tuple[Direction, dict | None, list[dict] | None]:
    """Where ("auto" positions) and how strongly ("auto" coeff) to steer, each chosen on validation prompts
    before any held-out number is looked at: the harmless ones, or where the aligned path found harmful val prompts
    the model answers (`held_out["gap"]`), those: the teacher's job is to refuse them. Returns the direction, the
    positions check and the coefficient sweep."""
    check = sweep = None
    gap = sets.held_out.get("gap", [])
    if config.positions == "auto":
        check = positions_check(model, tokenizer, direction, gap or sets.harmless_val, judge, config.max_new_tokens,
                                coherent, group="gap" if gap else "harmless")
        direction = replace(direction, positions=pick_positions(check))
    if config.coeff == "auto":
        sweep = coefficient_sweep(model, tokenizer, direction, sets.harmless_val, judge, config.max_new_tokens, gap)
        direction = replace(direction, coeff=pick_coeff(sweep))
    return direction, check, sweep


def write_plots(model, tokenizer, scores: dict[str, Tensor], direction: Direction, chosen: tuple[int, int],
                pos_labels: Sequence[str], folder: Path) -> None:
    """The three score heatmaps with the chosen candidate marked, and the direction's logit lens."""
    for kind in ("ablation", "steering", "kl"):
        base = {"ablation": scores["baseline_harmful"], "steering": scores["baseline_harmless"]}.get(kind)
        heatmap(scores[kind], kind, pos_labels, folder / f"{kind}_scores.png", chosen,
                None if base is None else float(base))
    write_json(folder / "logit_lens.json", logit_lens(model, tokenizer, direction.vector))


def write_scores(folder: Path, scores: dict[str, Tensor], pos_labels: Sequence[str]) -> None:
    """scores.json: every candidate's three scores, as [pos][layer] lists, with axis labels."""
    write_json(folder / "scores.json", {
        "axes": ["pos", "layer"], "pos_tokens": list(pos_labels),
        "pos_index": [-len(pos_labels) + i for i in range(len(pos_labels))],
        "ablation_refusal_harmful_val": _grid(scores["ablation"]),
        "steering_refusal_harmless_val": _grid(scores["steering"]),
        "kl_harmless_val": _grid(scores["kl"]),
        "baseline_refusal_harmful_val": round(float(scores["baseline_harmful"]), 4),
        "baseline_refusal_harmless_val": round(float(scores["baseline_harmless"]), 4)})


def _grid(t: Float[Tensor, "pos layer"]) -> list[list[float | None]]:
    return [[None if torch.isnan(x) else round(float(x), 5) for x in row] for row in t]
