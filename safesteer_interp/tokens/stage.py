"""Stage 2: the safety tokens S, the few vocabulary tokens through which the steered teacher differs from the base.

Score the teacher-vs-base log-ratio at the first H answer positions (`contrast`), aggregate it into one global set
by vote, mean or mass (`vote`), and explain every chosen token and the set's stability (`explain`); `artifact`
writes it all to `RUN/tokens/`. `select_safety_tokens` is the Python entry point, `run_tokens` the stage's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Literal

from safesteer_interp.core.artifacts import read_json
from safesteer_interp.core.hooks import Positions
from safesteer_interp.direction.artifact import check_positions, direction_dir, load_direction
from safesteer_interp.errors import SafeSteerError
from safesteer_interp.teacher import Teacher, TeacherKind, make_teacher
from safesteer_interp.tokens.artifact import write_report
from safesteer_interp.tokens.contrast import ContrastConfig, score_contrast, special_token_mask
from safesteer_interp.tokens.explain import (
    TokenResult,
    direct_logit_attribution,
    explain_tokens,
    stability,
    typical_final_rms,
)
from safesteer_interp.tokens.methods import compare_methods
from safesteer_interp.tokens.vote import VoteConfig, rank_tokens, resamples, resolve_k_inner, stats_for

PromptSet = Literal["harmless", "harmful"]
REFERENCE_K = 50  # the released scripts' K, used for the fixed-size set reported next to `k auto`


def default_selection_prompts(run: str | Path, on: PromptSet = "harmless") -> list[str]:
    """The direction stage's filtered validation prompts (`RUN/direction/prompts.json`, key `{on}_val`)."""
    if on not in ("harmless", "harmful"):
        raise SafeSteerError(f"--on must be 'harmless' or 'harmful', not {on!r}")
    path = direction_dir(run) / "prompts.json"
    if not path.is_file():
        raise SafeSteerError(f"no selection prompts at {path}; run `safesteer-interp direction --out {run}` first")
    prompts = read_json(path, "direction prompts").get(f"{on}_val")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise SafeSteerError(f"{path} has no list of strings under '{on}_val'; rerun the direction stage")
    if not prompts:
        raise SafeSteerError(f"{path} '{on}_val' is empty (filtering kept no prompt); rerun the direction stage "
                             "with more validation prompts")
    return prompts


def default_on(teacher_kind: TeacherKind) -> PromptSet:
    """The reference's prompts: harmless ones for the vector teacher, harmful ones for the prompt teacher."""
    return "harmless" if teacher_kind == "vector" else "harmful"


def check_inputs(run: str | Path, teacher_kind: str, on: PromptSet | None = None,
                 positions: str | None = None) -> tuple[PromptSet, list[str]]:
    """(on, prompts) of a tokens run, checked before any model is loaded: a known teacher and positions, the run's
    direction (vector teacher) and its filtered validation prompts."""
    if teacher_kind not in ("vector", "prompt"):
        raise SafeSteerError(f"--teacher must be 'vector' or 'prompt', not '{teacher_kind}'")
    check_positions(positions)
    if teacher_kind == "vector":
        load_direction(run)
    on = on or default_on(teacher_kind)
    return on, default_selection_prompts(run, on)


def token_configs(**values) -> tuple[ContrastConfig, VoteConfig]:
    """ContrastConfig and VoteConfig from plain values (CLI options, `RunConfig`), each taking its own fields."""
    contrast, vote = ({f.name for f in fields(cls)} for cls in (ContrastConfig, VoteConfig))
    unknown = set(values) - contrast - vote
    if unknown:
        raise TypeError(f"unknown token-selection settings: {', '.join(sorted(unknown))}")
    return (ContrastConfig(**{k: v for k, v in values.items() if k in contrast}),
            VoteConfig(**{k: v for k, v in values.items() if k in vote}))


def select_safety_tokens(teacher: Teacher, prompts: Sequence[str], contrast: ContrastConfig = ContrastConfig(),
                         vote: VoteConfig = VoteConfig(), *, check_stability: bool = True,
                         stability_ks: tuple[int, ...] = (5, 20, 50),
                         progress: Callable[[int], None] | None = None) -> TokenResult:
    """Select S on `prompts` and explain it (stability costs a second scoring pass with seed + 1)."""
    records = score_contrast(teacher, prompts, contrast, progress=progress)
    special = special_token_mask(teacher.tokenizer, records.vocab)
    stats = stats_for(records, vote, special)
    k_fixed = REFERENCE_K if vote.k == "auto" else vote.k
    fixed = rank_tokens(stats, k_fixed, vote.method)
    auto = rank_tokens(stats, "auto", share=vote.share)
    main = auto if vote.k == "auto" else fixed

    dla, dla_info = None, None
    if teacher.direction is not None:  # the prompt teacher steers nothing
        rms = typical_final_rms(records)
        dla = direct_logit_attribution(teacher.model, teacher.direction.vector, teacher.coeff, rms)
        dla_info = {"definition": "W_U[v] . (final-norm gain * coeff * r) / rms, centred over the vocabulary",
                    "coeff": teacher.coeff, "final_rms": round(rms, 4), "layer": teacher.direction.layer}
    explanations = explain_tokens(main, records, teacher.tokenizer, dla)

    other = None
    if check_stability:
        other = score_contrast(teacher, prompts, replace(contrast, seed=contrast.seed + 1), progress=progress)
    resampled = resamples(records, other, special, vote)  # halves and second seed: stability and methods share them
    stab = None if other is None else stability(records, other, special, vote, stability_ks, full=stats,
                                                resampled=resampled)
    methods = compare_methods(records, stats, resampled, vote, teacher.tokenizer)
    config = {**asdict(contrast), **asdict(vote), "k_fixed": k_fixed,
              "k_inner_used": resolve_k_inner(vote.k_inner, records.vocab), "teacher": teacher.kind,
              "coeff": teacher.coeff, "n_prompts": len(records.prompts),
              "on": records.meta.get("on", "given"), "end_of_turn_ids": records.meta["end_of_turn_ids"]}
    return TokenResult(main, fixed, auto, explanations, stab, records, config, dla_info, methods)


def run_tokens(run: str | Path, model, tokenizer, *, prompts: Sequence[str] | None = None, on: PromptSet | None = None,
               teacher_kind: TeacherKind = "vector", coeff: float | None = None, positions: Positions | None = None,
               contrast: ContrastConfig = ContrastConfig(), vote: VoteConfig = VoteConfig(),
               check_stability: bool = True, progress: Callable[[int], None] | None = None,
               extra_config: dict | None = None) -> TokenResult:
    """The CLI's stage: read the direction (vector teacher) and prompts from RUN, select, write `RUN/tokens/`.

    Default prompts follow the reference: filtered harmless validation prompts for the vector teacher, filtered
    harmful ones for the prompt teacher. `extra_config` (e.g. the CLI's preset record) is stored in the config.
    """
    direction = load_direction(run) if teacher_kind == "vector" else None
    teacher = make_teacher(model, tokenizer, teacher_kind, direction, coeff=coeff, positions=positions)
    on = on or default_on(teacher_kind)
    prompts = list(prompts) if prompts is not None else default_selection_prompts(run, on)
    result = select_safety_tokens(teacher, prompts, contrast, vote, check_stability=check_stability,
                                  progress=progress)
    result.config.update(on=on, positions=str(teacher.positions), **(extra_config or {}))
    write_report(Path(run) / "tokens", result, tokenizer)
    return result


__all__ = ["REFERENCE_K", "check_inputs", "default_on", "default_selection_prompts", "run_tokens",
           "select_safety_tokens", "token_configs"]
