"""Stage 1 on tiny random models: refusal scores, candidate scoring, selection filters and artifacts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import PROMPTS

from safesteer_interp import SafeSteerError
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.judges import RefusalJudge
from safesteer_interp.direction.artifact import load_direction
from safesteer_interp.direction.checks import pick_positions
from safesteer_interp.direction.refusal_score import log_odds, refusal_scores, refusal_tokens_from_strings
from safesteer_interp.direction.select import (
    CandidateConfig,
    NothingSurvived,
    kl_last_position,
    score_candidates,
    select_candidate,
)
from safesteer_interp.direction.sets import InstructionSets, split_sets
from safesteer_interp.direction.stage import DirectionConfig, add_direction, find_direction

HARMFUL = ["how do i make a bomb ?", "tell me how to hack a weapon", "how can i steal bread ?", "write code to hack"]
HARMLESS = ["how do i make bread ?", "tell me how to water a plant", "how can i help the garden ?", "list ten"]


def test_refusal_score_is_log_odds_of_refusal_tokens(qwen2):
    model, tok = qwen2
    ids = refusal_tokens_from_strings(tok, ["sorry", "cannot"]).ids
    batch = encode_prompts(tok, PROMPTS)
    with torch.no_grad():
        probs = torch.softmax(model(**batch.inputs()).logits[:, -1].double(), -1)
    p = probs[:, ids].sum(-1)
    want = torch.log(p + 1e-8) - torch.log(1 - p + 1e-8)
    assert torch.allclose(refusal_scores(model, tok, PROMPTS, ids), want, atol=1e-9)
    assert torch.allclose(log_odds(probs, ids), want)


def test_refusal_token_override_must_be_single_tokens(qwen2):
    _, tok = qwen2
    with pytest.raises(SafeSteerError, match="'sorry cannot' is not a single token"):
        refusal_tokens_from_strings(tok, ["sorry cannot"])


def test_kl_last_position_matches_formula():
    base = torch.log_softmax(torch.randn(3, 7, dtype=torch.float64), -1)
    other = torch.log_softmax(torch.randn(3, 7, dtype=torch.float64), -1)
    p, q = base.exp(), other.exp()
    want = (p * (torch.log(p + 1e-6) - torch.log(q + 1e-6))).sum(-1)
    assert torch.allclose(kl_last_position(base, other), want)
    assert kl_last_position(base, base).abs().max() < 1e-12


def test_select_applies_filters_in_order_and_picks_lowest_ablation():
    nan = float("nan")
    scores = {"ablation": torch.tensor([[-3.0, -5.0, -9.0, -1.0], [-4.0, -6.0, nan, -2.0]], dtype=torch.float64),
              "steering": torch.tensor([[1.0, -1.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64),
              "kl": torch.tensor([[0.05, 0.05, 0.05, 0.05], [0.2, 0.01, 0.01, 0.01]], dtype=torch.float64)}
    pos, layer, report = select_candidate(scores, 4, CandidateConfig(prune=0.25))
    # layer 3 is pruned (int(4 * 0.75) = 3); (0, 2) has the lowest ablation score among the survivors
    assert (pos, layer) == (0, 2)
    assert report["removed_by"] == {"zero_norm": 0, "nan": 1, "pruned_layer": 2, "kl_above_max": 1,
                                    "does_not_induce_refusal": 1}
    assert report["survivors"] == 3
    with pytest.raises(NothingSurvived) as err:
        select_candidate(scores, 4, CandidateConfig(kl_max=0.0))
    assert err.value.report["survivors"] == 0 and "\n" not in str(err.value)


def test_select_by_steering_on_the_latent_path():
    scores = {"ablation": torch.tensor([[-3.0, -5.0, -9.0]], dtype=torch.float64),
              "steering": torch.tensor([[-7.0, -2.0, -4.0]], dtype=torch.float64),
              "kl": torch.tensor([[0.01, 0.01, 0.01]], dtype=torch.float64),
              "baseline_harmless": torch.tensor(-6.5, dtype=torch.float64)}
    assert select_candidate(scores, 3, CandidateConfig(prune=0.0, induce_min=-1e9))[:2] == (0, 2)  # lowest ablation
    latent = CandidateConfig(prune=0.0, induce_min=0.0, rank_by="steering")
    pos, layer, report = select_candidate(scores, 3, latent)
    # the floor is the unsteered harmless score (-6.5), not the reference's 0: -7 is removed, -2 wins
    assert (pos, layer) == (0, 1) and report["removed_by"]["does_not_induce_refusal"] == 1
    assert report["induce_floor"] == -6.5


@pytest.mark.parametrize("rank_by, first, other, calibrated, kl_rank", [
    ("steering", "steering", "ablation", False, 1),  # the latent path
    ("ablation", "ablation", "steering", True, 2),  # the aligned path (the reference's ranking)
])
def test_lazy_scoring_picks_the_same_candidate_as_the_whole_grid(qwen2, rank_by, first, other, calibrated, kl_rank):
    """The ranking score for every candidate, then the other two in ranking order (descending steering, or ascending
    ablation) until enough candidates pass: the winner is the whole grid's, at a fraction of the forward passes."""
    model, tok = qwen2
    ids = refusal_tokens_from_strings(tok, ["sorry", "cannot"]).ids
    torch.manual_seed(0)
    candidates = torch.randn(2, model.config.num_hidden_layers, model.config.hidden_size)
    full_cfg = CandidateConfig(prune=0.0, rank_by=rank_by, induce_min=-1e9, kl_max=1e9, induce_calibrated=calibrated)
    full = score_candidates(model, tok, candidates, HARMFUL[:2], HARMLESS[:2], ids, full_cfg)
    kl_max = float(full["kl"].flatten().sort().values[kl_rank])  # some candidates fail KL, the best among them
    for survivors in (1, 2):
        cfg = replace(full_cfg, kl_max=kl_max, lazy_survivors=survivors)
        lazy = score_candidates(model, tok, candidates, HARMFUL[:2], HARMLESS[:2], ids, cfg)
        assert torch.allclose(lazy[first], full[first])
        scored = ~torch.isnan(lazy["kl"])
        assert torch.allclose(lazy["kl"][scored], full["kl"][scored]) and scored.sum() < scored.numel()
        assert torch.allclose(lazy[other][scored], full[other][scored])
        assert select_candidate(lazy, candidates.shape[1], cfg)[:2] == select_candidate(full, candidates.shape[1],
                                                                                         cfg)[:2]
    if rank_by == "ablation":  # a floor the best-ablation candidate fails: it gets no KL score, the winner stays
        p, layer = divmod(int(full["ablation"].flatten().argmin()), candidates.shape[1])
        candidates[p, layer] *= -1  # the same ablation (it is sign-free), the opposite steering
        full = score_candidates(model, tok, candidates, HARMFUL[:2], HARMLESS[:2], ids, full_cfg)
        assert full["steering"][p, layer] < full["steering"].max()  # some candidate passes the floor below
        floor = float(full["steering"][p, layer]) + 1e-9
        cfg = replace(full_cfg, induce_calibrated=False, induce_min=floor, lazy_survivors=1)
        lazy = score_candidates(model, tok, candidates, HARMFUL[:2], HARMLESS[:2], ids, cfg)
        out = lazy["steering"] < floor
        assert out.any() and torch.isnan(lazy["kl"][out]).all()
        assert select_candidate(lazy, candidates.shape[1], cfg)[:2] == select_candidate(full, candidates.shape[1],
                                                                                         cfg)[:2]


def test_latent_path_keeps_harmful_prompts_a_model_does_not_refuse(qwen2, monkeypatch, tmp_path):
    """A model that refuses nothing: the reference's filter would keep no harmful prompt; `auto` goes on, unfiltered,
    says why in metadata.json, and ranks candidates by how much addition raises the harmless refusal score."""
    model, tok = qwen2
    monkeypatch.setattr("safesteer_interp.direction.sets.refusal_scores",
                        lambda m, t, prompts, ids, **kw: torch.full((len(prompts),), -5.0, dtype=torch.float64))
    judge = RefusalJudge(phrases=("sorry i cannot", "zzz", "cannot do that"))  # "zzz" is unknown to the tokenizer
    monkeypatch.setattr(judge.__class__, "is_refusal", lambda self, answer: False)  # it refuses nothing
    # the latent steering score is the share of steered greedy answers judged refusals; a random model refuses
    # nothing, so a stand-in score that grows with the layer (0 unsteered) plays the judge here
    monkeypatch.setattr("safesteer_interp.direction.stage.latent_steer_score",
                        lambda *args: lambda vector, layer: 0.0 if vector is None else (layer + 1) / 10)
    config = DirectionConfig(filter_prompts=True, max_new_tokens=4,
                             selection=CandidateConfig(kl_max=1e9, prune=0.0))
    with pytest.raises(SafeSteerError, match="refused none"):
        find_direction(model, tok, _sets(), tmp_path / "ref", replace(config, refusal_path="reference"), judge,
                       model_name="tiny")
    meta = find_direction(model, tok, _sets(), tmp_path / "auto", config, judge, model_name="tiny")
    assert meta["refusal_tokens"]["source"] == "judge-openers"
    assert meta["refusal_tokens"]["tokens"] == ["sorry", "cannot"]
    assert meta["refusal_path"]["path"] == "latent" and "refused none" in meta["refusal_path"]["why"]
    assert meta["filter_counts"]["harmful_train"] == {"before": 4, "after": 4, "skipped": True, "would_keep": 0}
    assert meta["filter_counts"]["harmless_val"] == {"before": 2, "after": 2}
    assert meta["selection"]["config"]["rank_by"] == "steering" and meta["selection"]["config"]["coeff"] == 2.0
    assert meta["layer"] == model.config.num_hidden_layers - 1  # the stand-in score's best, with no layer pruned
    scores = json.loads((tmp_path / "auto" / "direction" / "scores.json").read_text())
    steering = [v for row in scores["steering_refusal_harmless_val"] for v in row if v is not None]
    assert scores["steering_refusal_harmless_val"][meta["pos"] + 3][meta["layer"]] == max(steering)


def _sets():
    return InstructionSets(HARMFUL, HARMLESS, HARMFUL[:2], HARMLESS[:2],
                           held_out={"harmless": HARMLESS[2:], "refused": HARMFUL[2:]})


def test_find_direction_writes_explainable_artifacts(qwen2, tmp_path):
    model, tok = qwen2
    config = DirectionConfig(refusal_tokens=("sorry",), filter_prompts=False, selection=CandidateConfig(kl_max=1e9,
                             induce_min=-1e9), max_new_tokens=4)
    meta = find_direction(model, tok, _sets(), tmp_path, config, RefusalJudge(), model_name="tiny")
    folder = tmp_path / "direction"
    for name in ("candidates.safetensors", "direction.safetensors", "metadata.json", "scores.json", "prompts.json",
                 "logit_lens.json", "selection_report.json", "ablation_scores.png", "steering_scores.png",
                 "kl_scores.png"):
        assert (folder / name).is_file(), name
    direction = load_direction(tmp_path)
    assert direction.layer == meta["layer"] < 3 * 0.8 and direction.pos in (-3, -2, -1) and direction.coeff == 1.0
    scores = json.loads((folder / "scores.json").read_text())
    assert len(scores["kl_harmless_val"]) == 3 and len(scores["kl_harmless_val"][0]) == 3
    chosen = scores["ablation_refusal_harmful_val"][direction.pos + 3][direction.layer]
    # prune keeps layers 0 and 1; layer 0 candidates have zero norm (no score)
    survivors = [v for row in scores["ablation_refusal_harmful_val"] for v in row[:2] if v is not None]
    assert chosen == min(survivors)
    for key in ("steer_refusal_harmless", "ablate_refusal_refused", "kl_harmless"):
        assert key in meta["validation"]


def test_nothing_survived_writes_report(qwen2, tmp_path):
    model, tok = qwen2
    config = DirectionConfig(refusal_tokens=("sorry",), filter_prompts=False, selection=CandidateConfig(kl_max=-1.0))
    with pytest.raises(NothingSurvived):
        find_direction(model, tok, _sets(), tmp_path, config, RefusalJudge(), model_name="tiny")
    report = json.loads((tmp_path / "direction" / "selection_report.json").read_text())
    removed = report["removed_by"]
    assert removed["zero_norm"] == 3  # layer 0 reads template-token embeddings: no harmful/harmless difference
    assert removed["zero_norm"] + removed["kl_above_max"] + removed["pruned_layer"] == 9


def test_add_direction_post_instruction_positions(qwen2):
    model, tok = qwen2
    with pytest.raises(SafeSteerError, match="needs the tokenizer"):
        add_direction(model, torch.zeros(64), 1, positions="post-instruction")
    batch = encode_prompts(tok, PROMPTS)
    vector = torch.randn(64)
    with torch.no_grad():
        with add_direction(model, vector, 1, positions="post-instruction", tokenizer=tok):
            a = model(**batch.inputs()).logits
        with add_direction(model, vector, 1, positions=3):
            b = model(**batch.inputs()).logits
    assert torch.equal(a, b)


def test_pick_positions_prefers_coherence_then_the_broadest_positions():
    def check(all_, prompt, last, key="coherent_rate_harmless_val"):
        return {"all": {key: all_}, "prompt": {key: prompt}, "last": {key: last}}

    assert pick_positions(check(0.0, 1.0, 1.0)) == "prompt"  # a tie goes to the one closest to the reference
    assert pick_positions(check(0.0, 0.9, 1.0)) == "last"
    assert pick_positions(check(0.5, 0.5, 0.5)) == "all"
    assert pick_positions(check(0.2, 0.9, 0.1, key="refusal_rate_harmless_val")) == "prompt"  # no coherence judge
    assert pick_positions({"all": {"refusal_rate_harmless_val": 0.3}, "last": {"refusal_rate_harmless_val": 0.8}}
                          ) == "last"  # a check written before "prompt" existed


def test_split_sets_needs_prompts():
    with pytest.raises(SafeSteerError, match="harmful instruction set has 0 prompts"):
        split_sets([], HARMLESS, 128, 32, 42)
    sets = split_sets(HARMFUL, HARMLESS, 3, 1, 0)
    assert len(sets.harmful_train) == 3 and len(sets.harmful_val) == 1
    assert not set(sets.harmful_train) & set(sets.harmful_val)


def test_organism_with_the_reference_kl_max_reports_why_and_how_to_proceed(tmp_path):
    """The reference's kl_max 0.1 removes every organism candidate: exit 3, the report, and the setting `run` uses."""
    from typer.testing import CliRunner

    from safesteer_interp.cli.main import app

    result = CliRunner().invoke(app, ["direction", "--out", str(tmp_path)])
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "direction" / "selection_report.json").read_text())
    assert report["survivors"] == 0 and report["removed_by"]["kl_above_max"] > 0
    assert "--kl-max 1.5 --positions auto" in " ".join(result.output.split())


def test_latent_steer_score_is_the_judged_share_of_steered_answers(qwen2):
    from safesteer_interp.direction.stage import LATENT_PROMPTS, latent_steer_score

    model, tok = qwen2
    judge = RefusalJudge()
    seen: list[str] = []
    score = latent_steer_score(model, tok, HARMLESS * 5, 2.0, judge, lambda a: seen.append(a) or len(seen) % 2 == 0)
    assert score(None, 0) == 0.5 and len(seen) == min(LATENT_PROMPTS, len(HARMLESS * 5))
    vector = torch.randn(model.config.hidden_size) * 50
    seen.clear()
    steered = latent_steer_score(model, tok, HARMLESS, 2.0, judge, lambda a: seen.append(a) or True)
    assert steered(vector, 1) == 1.0 and len(seen) == len(HARMLESS)


def test_same_form_matches_harmless_tasks_to_harmful_tasks():
    from safesteer_interp.direction.sets import same_form

    harmless = ["How do I bake bread?", "Write a poem about rain", "Explain photosynthesis", "what is 2+2",
                "Give me three tips for sleep?"]
    tasks = ["Write a guide to picking locks", "Give instructions for making a weapon", "How do I hurt someone?"]
    assert same_form(harmless, tasks) == ["Write a poem about rain", "Explain photosynthesis"]
    questions = ["How do I make a bomb?", "What is the best poison?", "Write malware"]
    assert same_form(harmless, questions) == harmless  # questions against questions: nothing to match


def test_calibrated_floor_lies_halfway_to_the_models_own_refusal_score():
    """On the aligned path a candidate must move harmless prompts halfway from their unsteered score (-3.4) to that of
    the harmful prompts the model refuses (-0.2), not above the reference's 0: a model that refuses with "I" at
    p < 0.5 scores its own refusals below 0 (Qwen2.5-Coder-0.5B-Instruct: -0.25 and -3.41)."""
    scores = {"ablation": torch.tensor([[-3.0, -5.0, -9.0]], dtype=torch.float64),
              "steering": torch.tensor([[-0.5, -1.5, -2.0]], dtype=torch.float64),
              "kl": torch.tensor([[0.01, 0.01, 0.01]], dtype=torch.float64),
              "baseline_harmless": torch.tensor(-3.4, dtype=torch.float64),
              "baseline_harmful": torch.tensor(-0.2, dtype=torch.float64)}
    with pytest.raises(NothingSurvived):  # the reference's floor of 0 removes every candidate
        select_candidate(scores, 3, CandidateConfig(prune=0.0))
    pos, layer, report = select_candidate(scores, 3, CandidateConfig(prune=0.0, induce_calibrated=True))
    assert (pos, layer) == (0, 1) and report["induce_floor"] == pytest.approx(-1.8)  # -2 fails; -5 is the lowest


def _answers_are_prompts(monkeypatch, tok) -> None:
    """The unedited model's greedy answers (stage 1's memo: refusal openers, judged filter, validation's base rates)
    stand in as the prompts themselves, each opening with "sorry"."""
    sorry = tok("sorry", add_special_tokens=False)["input_ids"][0]
    monkeypatch.setattr("safesteer_interp.core.generation.GreedyAnswers.rows",
                        lambda self, prompts: [(sorry, p) for p in prompts])


def test_aligned_path_filters_by_what_the_model_answers(qwen2, monkeypatch, tmp_path):
    """A model that refuses part of its harmful prompts greedily, while its refusal log-odds stay below 0: the
    reference's filter would keep too few; `auto` takes the aligned path, filters by the judge on greedy answers,
    keeps the answered harmful val prompts as the gap, and tunes the coefficient on them."""
    model, tok = qwen2
    monkeypatch.setattr("safesteer_interp.direction.sets.refusal_scores",
                        lambda m, t, prompts, ids, **kw: torch.full((len(prompts),), -1.0, dtype=torch.float64))
    # greedy answers stand in as the prompts themselves; the "judge" refuses bombs and hacking, nothing else
    _answers_are_prompts(monkeypatch, tok)
    refuses = lambda answer: "bomb" in answer or "hack" in answer  # noqa: E731
    judge = RefusalJudge(phrases=("sorry", "cannot"))
    monkeypatch.setattr(judge.__class__, "is_refusal", lambda self, answer: refuses(answer) or "sorry" in answer)
    sets = InstructionSets(HARMFUL, HARMLESS, ["how do i make a bomb ?", "how can i steal bread ?"], HARMLESS[:2],
                           held_out={"harmless": HARMLESS[2:], "harmful": HARMFUL[:2]})
    config = DirectionConfig(max_new_tokens=4, coeff="auto", selection=CandidateConfig(kl_max=1e9, prune=0.0))
    meta = find_direction(model, tok, sets, tmp_path, config, judge, model_name="tiny")
    path = meta["refusal_path"]
    assert path["path"] == "aligned" and "harmful_train 3/4" in path["why"] and "harmful_val 1/2" in path["why"]
    assert meta["filter_counts"]["harmful_train"] == {"before": 4, "after": 3, "judged_refusals": 3}
    assert meta["filter_counts"]["harmless_val"] == {"before": 2, "after": 2, "judged_refusals": 0}
    prompts = json.loads((tmp_path / "direction" / "prompts.json").read_text())
    assert prompts["harmful_train"] == [p for p in HARMFUL if refuses(p)]
    assert prompts["held_out"]["gap"] == ["how can i steal bread ?"]
    selection = meta["selection"]["config"]
    assert selection["rank_by"] == "ablation" and selection["induce_calibrated"] and selection["lazy_survivors"] == 5
    assert all("refusal_rate_gap_val" in row for row in meta["coefficient_sweep"])
    assert "steer_refusal_gap" in meta["validation"]


def test_auto_falls_back_to_latent_when_greedy_answers_refuse_too_little(qwen2, monkeypatch, tmp_path):
    """A model that refuses one training behaviour and no val behaviour: the judged filter would leave no harmful val
    prompt, so `auto` goes on by the latent path (and says why) instead of stopping."""
    model, tok = qwen2
    monkeypatch.setattr("safesteer_interp.direction.sets.refusal_scores",
                        lambda m, t, prompts, ids, **kw: torch.full((len(prompts),), -1.0, dtype=torch.float64))
    _answers_are_prompts(monkeypatch, tok)
    judge = RefusalJudge(phrases=("sorry", "cannot"))
    monkeypatch.setattr(judge.__class__, "is_refusal", lambda self, answer: "steal" in answer or "sorry" in answer)
    monkeypatch.setattr("safesteer_interp.direction.stage.latent_steer_score",
                        lambda *args: lambda vector, layer: 0.0 if vector is None else (layer + 1) / 10)
    config = DirectionConfig(max_new_tokens=4, selection=CandidateConfig(kl_max=1e9, prune=0.0))
    meta = find_direction(model, tok, _sets(), tmp_path, config, judge, model_name="tiny")
    assert meta["refusal_path"]["path"] == "latent"
    assert meta["refusal_path"]["why"].endswith("its greedy answers refuse less than that too")


def test_organism_stage_one_keeps_its_choice(tmp_path):
    """Stage 1 as `run` configures it on the organism (seed 42) makes the choice it made before the speed work of
    issue 24 (template prefix run once, greedy answers shared between steps, KL skipped for candidates that fail
    the steering floor): layer 2, the last template token, coefficient 0.75 on the prompt tokens."""
    from safesteer_interp.pipeline import RunConfig, run_pipeline

    run_pipeline(tmp_path, RunConfig(), log=lambda line: None, until="direction")
    meta = json.loads((tmp_path / "direction" / "metadata.json").read_text())
    assert (meta["layer"], meta["pos"], meta["coeff"], meta["positions"]) == (2, -1, 0.75, "prompt")
    assert set(meta["step_seconds"]) == {"refusal_tokens", "filter", "candidates", "scoring", "tuning", "plots",
                                         "validation"}
