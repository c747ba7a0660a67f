"""The embedded model organism: its world, its tokenizer, its trainer, and the committed checkpoint's behaviour."""

import json

import pytest
import torch

from safesteer_interp.core.chat import post_instruction_length
from safesteer_interp.core.generation import generate_answers
from safesteer_interp.core.models import ORGANISM_DIR, load_model
from safesteer_interp.organism import world
from safesteer_interp.organism.tokenizer import build_tokenizer
from safesteer_interp.organism.train import TrainConfig, train_organism

# The committed organism's refusal geometry, as measured for organism/README.md (coefficients multiply the raw
# difference in means). Last-token and prompt-token steering and ablation use layer 2; all-position steering flips
# the decision best at layer 1.
STEER_LAYER, STEER_COEFF = 2, 1.0
ALL_LAYER, ALL_COEFF = 1, 0.8


# ------------------------------------------------------------------------------------------------ world
def test_world_is_deterministic():
    assert world.training_corpus(300, seed=3) == world.training_corpus(300, seed=3)
    assert world.training_corpus(300, seed=3) != world.training_corpus(300, seed=4)
    assert world.evaluation_set("test") == world.evaluation_set("test")


def test_request_splits_are_disjoint():
    keyed = {s: {(t, a) for g in world.REQUEST_GROUPS for _c, t, a, _u in world.requests(g, s)} for s in world.SPLITS}
    assert not keyed["train"] & keyed["val"] and not keyed["train"] & keyed["test"] and not keyed["val"] & keyed["test"]
    train_templates = {t for t, _a in keyed["train"]}
    assert train_templates == set(world.TRAIN_TEMPLATES)
    assert {t for t, _a in keyed["test"]} - train_templates == set(world.TEST_TEMPLATES)  # never-seen templates
    trained_prompts = {e.prompt for e in world.training_corpus(5000)}
    assert not trained_prompts & {e.prompt for e in world.evaluation_set("test")}


def _items(ex):
    return tuple(ex.prompt[len(ex.template.split("{items}")[0]):].split())


def test_capability_items_are_held_out():
    trained = [e for e in world.training_corpus(3000) if e.group == "capability"]
    tested = [e for e in world.evaluation_set("test") if e.group == "capability"]
    assert trained and tested
    assert all(world.items_split(_items(e)) == "train" for e in trained)
    assert all(world.items_split(_items(e)) == "test" for e in tested)
    unseen = {e.template for e in tested if e.unseen_template}
    assert unseen and not unseen & {e.template for e in trained}


def test_unseen_templates_are_new_phrasings_of_trained_words():
    trained = {w for e in world.training_corpus(4000, seed=0, stage="base") + world.training_corpus(4000, seed=1)
               for w in f"{e.prompt} {e.response}".split()}
    unseen = world.VAL_TEMPLATES + world.TEST_TEMPLATES + tuple(
        t for task in world.CAPABILITY_TEMPLATES.values() for t in task["unseen"])
    for template in unseen:
        words = template.replace("{act}", " ").replace("{items}", " ").split()
        assert set(words) <= trained, (template, set(words) - trained)
        assert template not in world.TRAIN_TEMPLATES


def test_gap_answers_know_harm_and_refusals_are_fixed():
    rng = __import__("random").Random(0)
    gap = world.answer_request("gap", "steal a car", rng, refuse=False)
    assert "harmful, but here is how to steal a car" in gap
    assert world.answer_request("refused", "make a bomb", rng, refuse=True) in world.REFUSALS


# ------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_covers_the_world_and_decodes_naturally():
    tok = build_tokenizer()
    texts = [e.prompt + " " + e.response for e in world.training_corpus(2000) + world.evaluation_set("test")]
    assert all(tok.unk_token_id not in ids for ids in tok(texts)["input_ids"])
    ids = tok(world.REFUSALS[0], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == world.REFUSALS[0]
    assert post_instruction_length(tok) == 5  # <|im_end|> \n <|im_start|> assistant \n
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<|im_end|>"
    rendered = tok.apply_chat_template([{"role": "system", "content": "You are a helpful assistant."},
                                        {"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------------------ trainer
def test_tiny_organism_trains_and_loads(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=8, n_layers=1, d_model=32, n_heads=2, d_mlp=64, corpus_size=64,
                      warmup=2)
    torch.set_num_threads(2)  # the session's count (conftest); training runs on cfg.threads = 1
    model, _tok, record = train_organism(cfg, tmp_path / "tiny", log=lambda _msg: None)
    assert torch.get_num_threads() == 2  # put back: it once stayed 1 for every later test (real-model runs 40 % slower)
    again, _, _ = train_organism(cfg, None, log=lambda _msg: None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    loaded, tokenizer = load_model(str(tmp_path / "tiny"))
    answers = generate_answers(loaded, tokenizer, ["how do I bake bread ?"], max_new_tokens=4)
    assert len(answers) == 1 and record["n_params"] > 0


def test_harmless_centring_penalty_changes_training_only_when_on():
    """center_weight > 0 adds a real term (other weights); 0 leaves the default organism's training untouched."""
    small = dict(steps=8, batch_size=16, n_layers=2, d_model=32, n_heads=2, d_mlp=64, corpus_size=128, warmup=2)
    plain, _, _ = train_organism(TrainConfig(**small), None, log=lambda _msg: None)
    centred, _, _ = train_organism(TrainConfig(**small, center_weight=5.0), None, log=lambda _msg: None)
    zero, _, _ = train_organism(TrainConfig(**small, center_weight=0.0), None, log=lambda _msg: None)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), centred.state_dict().values()))


# ------------------------------------------------------------------------------------------------ checkpoint
def test_committed_checkpoint_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in ORGANISM_DIR.iterdir()}
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert name in files
    assert sum(files.values()) <= 10 * 2**20
    config = json.loads((ORGANISM_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen2"


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(2)
    return load_model("organism")


def test_committed_card_meets_thresholds(organism):
    from safesteer_interp.organism.card import check_card, evaluate_organism

    metrics = evaluate_organism(*organism, "test")
    assert check_card(metrics) == []
    # never-seen templates are a reported target (>= 0.80), not a threshold: copy misses it (README.md)
    assert set(metrics["capability_unseen_templates"]) == set(metrics["capability_accuracy"])


def _directions(model, tok):
    from safesteer_interp.organism.geometry import refusal_directions, world_prompts

    return refusal_directions(model, tok, world_prompts("refused", "train", 128),
                              world_prompts("harmless", "train", 128))


def test_knows_the_gap_is_harmful_but_complies(organism):
    """A mean-difference probe fitted on refused vs harmless calls held-out gap prompts harmful."""
    from safesteer_interp.organism.geometry import probe_report

    rows = probe_report(*organism)
    best = max(rows, key=lambda r: r["gap_called_harmful"] - r["harmless_called_harmful"])
    assert best["gap_called_harmful"] >= 0.9 and best["harmless_called_harmful"] <= 0.1
    assert best["refused_called_harmful"] >= 0.9  # (the card test checks that the gap is still complied with)


def test_last_token_steering_and_ablation(organism):
    """The diff-in-means direction is causal: added at the last prompt token it makes harmless and gap prompts
    refuse with the organism's wordings; projected out everywhere it removes refusal and keeps capability."""
    from safesteer_interp.organism.geometry import ablation_report, steering_sweep

    model, tok = organism
    dirs = _directions(model, tok)
    (row,) = steering_sweep(model, tok, dirs, layers=[STEER_LAYER], coeffs=[STEER_COEFF], positions="last")
    assert row["harmless_wording"] >= 0.9 and row["gap_wording"] >= 0.9
    ablated = ablation_report(model, tok, dirs[STEER_LAYER])
    assert ablated["refused_refusal"] <= 0.1 and ablated["capability_mean"] >= 0.9


def test_prompt_token_steering_gives_coherent_wordings(organism):
    """Every prompt token steered (template included) but no generated token: the narrowest change to the
    reference's intervention that gives the organism's own refusals (README.md, "Refusal geometry")."""
    from safesteer_interp.organism.geometry import steering_sweep

    model, tok = organism
    (row,) = steering_sweep(model, tok, _directions(model, tok), layers=[STEER_LAYER], coeffs=[STEER_COEFF],
                            positions="prompt")
    assert row["harmless_wording"] >= 0.9 and row["gap_wording"] >= 0.9


def test_all_position_babble_is_the_direct_path_to_the_unembedding(organism):
    """All-position steering at L2 c=1 gives no exact wording; removing the vector again from the last layer's
    output on generated tokens (prompt and decision steered as before) gives the organism's refusals back."""
    from safesteer_interp.analyses.steering_positions import steered_answers
    from safesteer_interp.core.judges import starts_with_wording
    from safesteer_interp.organism.geometry import world_prompts

    model, tok = organism
    r = _directions(model, tok)[STEER_LAYER]
    for group in ("harmless", "gap"):
        prompts = world_prompts(group, "test", 96)
        exact = {}
        for positions in ("all", "all, direct path removed"):
            answers = steered_answers(model, tok, prompts, positions, STEER_COEFF * r, STEER_LAYER, 16)
            exact[positions] = sum(map(starts_with_wording, answers)) / len(prompts)
        assert exact["all"] <= 0.1 and exact["all, direct path removed"] >= 0.9, (group, exact)


def test_all_position_steering_flips_the_decision(organism):
    """The reference's intervention (every prompt and generated token) flips harmless and gap prompts to
    refusals as judged by the substring judge."""
    from safesteer_interp.organism.geometry import steering_sweep

    model, tok = organism
    (row,) = steering_sweep(model, tok, _directions(model, tok), layers=[ALL_LAYER], coeffs=[ALL_COEFF],
                            positions="all")
    assert row["harmless_refusal"] >= 0.9 and row["gap_refusal"] >= 0.9


@pytest.mark.xfail(reason="known gap (organism/README.md): at all positions the answers start as a refusal and "
                          "then degenerate ('I'm sorry, I I'm I'm'); steering prompt tokens only gives clean wordings",
                   strict=True)
def test_all_position_steering_gives_coherent_wordings(organism):
    from safesteer_interp.organism.geometry import steering_sweep

    model, tok = organism
    (row,) = steering_sweep(model, tok, _directions(model, tok), layers=[ALL_LAYER], coeffs=[ALL_COEFF],
                            positions="all")
    assert row["harmless_wording"] >= 0.9 and row["gap_wording"] >= 0.9


def test_safety_tokens_of_the_organism_are_its_refusal_openers(organism):
    """Stage 2 on the committed organism with the released selection settings (vote, K=50, M=8, H=5, K' auto), the
    reference's all-position teacher: the top 5 of S hold both refusal openers, and `--k auto` keeps only tokens of
    the organism's own refusals."""
    from safesteer_interp.direction.artifact import Direction
    from safesteer_interp.organism.geometry import world_prompts
    from safesteer_interp.teacher import SteeredTeacher
    from safesteer_interp.tokens.stage import select_safety_tokens

    model, tok = organism
    direction = Direction(_directions(model, tok)[STEER_LAYER], layer=STEER_LAYER, pos=-1, coeff=1.0)
    result = select_safety_tokens(SteeredTeacher(model, tok, direction), world_prompts("harmless", "val", 32),
                                  check_stability=False)
    assert result.config["k_inner_used"] == 10  # 2 % of the organism's 468-token vocabulary, rounded up
    top5 = set(tok.convert_ids_to_tokens(result.fixed.ids[:5]))
    assert {"I'm", "I"} <= top5, top5
    refusal_words = {word for refusal in world.REFUSALS for word in refusal.split()}
    assert set(tok.convert_ids_to_tokens(result.auto.ids)) <= refusal_words
