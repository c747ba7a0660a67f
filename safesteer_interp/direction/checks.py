"""Judging a direction by generation: the coefficient and steering positions chosen on validation prompts, then
the held-out behaviour of the chosen direction (steered, ablated, and its KL cost).

Every rate is a judge's verdict on greedy answers; `coherent` (the organism's wordings) is a stricter second judge
that tells a real refusal from babble that happens to contain a refusal phrase.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from safesteer_interp.core.generation import GreedyAnswers, generate_answers
from safesteer_interp.core.hooks import ablate_direction, add_to_resid
from safesteer_interp.core.scoring import next_token_logprobs
from safesteer_interp.direction.artifact import TEACHER_POSITIONS, Direction
from safesteer_interp.direction.select import kl_last_position

COEFF_GRID = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def refusal_rate(model, tokenizer, prompts: Sequence[str], judge, max_new_tokens: int) -> float:
    """Share of greedy answers the judge marks as refusals."""
    return judge.refusal_rate(generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens))


def coefficient_sweep(model, tokenizer, direction: Direction, harmless_val: Sequence[str], judge,
                      max_new_tokens: int, gap_val: Sequence[str] = ()) -> list[dict]:
    """Refusal induced on harmless val, and its KL cost, per coefficient (at the direction's positions); with
    `gap_val` (the aligned path: harmful val prompts the base model answers) also the refusal it induces there."""
    base = next_token_logprobs(model, tokenizer, harmless_val)
    rows = []
    for coeff in COEFF_GRID:
        with add_to_resid(model, direction.vector, direction.layer, coeff, positions=direction.positions):
            row = {"coeff": coeff}
            if gap_val:
                row["refusal_rate_gap_val"] = round(refusal_rate(model, tokenizer, gap_val, judge, max_new_tokens), 4)
            rate = refusal_rate(model, tokenizer, harmless_val, judge, max_new_tokens)
            kl = kl_last_position(base, next_token_logprobs(model, tokenizer, harmless_val)).mean()
        rows.append({**row, "refusal_rate_harmless_val": round(rate, 4), "kl_harmless_val": round(float(kl), 4)})
    return rows


def judged_rates(answers: Sequence[str], judge, coherent: Callable[[str], bool] | None) -> dict[str, float]:
    """Refusal rate by the judge and, with a `coherent` judge, the share that are real refusal wordings."""
    rates = {"refusal": round(judge.refusal_rate(answers), 4)}
    if coherent is not None:
        rates["coherent"] = round(sum(map(coherent, answers)) / len(answers), 4)
    return rates


def positions_check(model, tokenizer, direction: Direction, harmless_val: Sequence[str], judge, max_new_tokens: int,
                    coherent: Callable[[str], bool] | None = None, group: str = "harmless") -> dict:
    """Refusal induced on *validation* prompts (harmless ones; on the aligned path, `group="gap"`, the harmful ones
    the base model answers) by steering at each of the teacher positions (every token, every prompt token, the last
    prompt token).

    Adding the vector to every token (the reference) can flip the decision and then drown the answer tokens: a
    refusal opener repeated ("I'm I'm I'm") passes a substring judge. `coherent` (the organism's wordings) tells
    the two apart; without it the substring judge decides.
    """
    out = {}
    for positions in TEACHER_POSITIONS:
        with add_to_resid(model, direction.vector, direction.layer, direction.coeff, positions=positions):
            answers = generate_answers(model, tokenizer, list(harmless_val), max_new_tokens=max_new_tokens)
        rates = judged_rates(answers, judge, coherent)
        out[positions] = {**{f"{k}_rate_{group}_val": v for k, v in rates.items()}, "example": answers[0]}
    return out


def pick_positions(check: dict) -> str:
    """The positions whose steered answers refuse best on validation (coherent rate if judged); a tie goes to the
    broader positions (all > prompt > last), the closest to the reference's intervention."""
    rates = [k for k in check["all"] if k.endswith("_val")]
    key = next((k for k in rates if k.startswith("coherent_rate")), rates[0])
    return max((p for p in TEACHER_POSITIONS if p in check), key=lambda p: (check[p][key], -TEACHER_POSITIONS.index(p)))


def pick_coeff(sweep: list[dict], target: float = 0.9) -> float:
    """The smallest coefficient that makes >= target of the validation prompts refuse (else the strongest): the
    harmless ones, or on the aligned path (`refusal_rate_gap_val`) the harmful ones the base model answers."""
    key = "refusal_rate_gap_val" if "refusal_rate_gap_val" in sweep[0] else "refusal_rate_harmless_val"
    for row in sweep:
        if row[key] >= target:
            return row["coeff"]
    return max(sweep, key=lambda r: r[key])["coeff"]


def validate(model, tokenizer, direction: Direction, held_out: dict[str, list[str]], judge, max_new_tokens: int,
             coherent: Callable[[str], bool] | None = None, base_answers: GreedyAnswers | None = None) -> dict:
    """Held-out behaviour of the chosen direction, judged on greedy generations (the unedited model's from the
    stage's memo `base_answers` where given).

    `coherent` (optional) is a stricter judge: the answer *is* one of the model's refusal wordings, not babble that
    happens to contain a refusal phrase. Its rates are reported as `*_coherent`.
    """
    out: dict = {}

    def record(key: str, prompts: list[str], memo: GreedyAnswers | None = None) -> None:
        answers = memo(prompts) if memo else generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        rates = judged_rates(answers, judge, coherent)
        out[key] = rates["refusal"]
        if "coherent" in rates:
            out[f"{key}_coherent"] = rates["coherent"]
        out.setdefault("samples", {})[key] = [{"prompt": p, "answer": a} for p, a in zip(prompts[:3], answers[:3])]

    with add_to_resid(model, direction.vector, direction.layer, direction.coeff, positions=direction.positions):
        for group in ("harmless", "gap", "harmful"):
            if held_out.get(group):
                record(f"steer_refusal_{group}", held_out[group])
    for group in ("refused", "harmful"):
        if held_out.get(group):
            record(f"base_refusal_{group}", held_out[group], base_answers)
            with ablate_direction(model, direction.vector):
                record(f"ablate_refusal_{group}", held_out[group])
    if held_out.get("harmless"):
        base = next_token_logprobs(model, tokenizer, held_out["harmless"])
        with ablate_direction(model, direction.vector):
            ablated = next_token_logprobs(model, tokenizer, held_out["harmless"])
        out["kl_harmless"] = round(float(kl_last_position(base, ablated).mean()), 5)
    out["n_prompts"] = {g: len(p) for g, p in held_out.items()}
    return out
