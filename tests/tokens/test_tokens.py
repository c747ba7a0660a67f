"""Safety-token selection: aggregation against slow loop references, scoring against hand-built forwards, artifacts."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from conftest import PROMPTS
from typer.testing import CliRunner

from safesteer_interp import SafeSteerError
from safesteer_interp.core.artifacts import write_json
from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.hooks import add_to_resid
from safesteer_interp.direction.artifact import Direction, save_direction
from safesteer_interp.teacher import make_teacher
from safesteer_interp.tokens.contrast import (
    ContrastConfig,
    ContrastRecords,
    score_contrast,
    special_token_mask,
    valid_positions,
)
from safesteer_interp.tokens.explain import direct_logit_attribution, jaccard, ranks_in_records, stability
from safesteer_interp.tokens.stage import default_selection_prompts, run_tokens, select_safety_tokens
from safesteer_interp.tokens.vote import (
    VoteConfig,
    rank_tokens,
    resamples,
    resolve_k_inner,
    saturation,
    select_tokens,
    stats_for,
    token_stats,
    vote_warning,
)

EOT = (3, 7)  # end-of-turn ids of the synthetic records
SPECIAL = (0, 1, 3)


def _random_records(seed=0, rows=12, horizon=4, vocab=40) -> ContrastRecords:
    """Random log-probs in which the base's argmax sometimes hits an end-of-turn id (so masking matters)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(rows, horizon, vocab, generator=g) * 2
    steer = base + torch.randn(rows, horizon, vocab, generator=g) * 1.5
    for r in range(0, rows, 3):  # force an end of turn at position r % horizon in every third row
        base[r, r % horizon, EOT[r % 2]] = 50.0
    lp_b, lp_s = torch.log_softmax(base, -1), torch.log_softmax(steer, -1)
    valid = valid_positions(lp_b.argmax(-1), EOT)
    return ContrastRecords(lp_s, lp_b, valid, torch.arange(rows) // 2, torch.zeros(rows, horizon - 1, dtype=torch.long),
                           [f"p{i}" for i in range(rows // 2)])


def _slow_reference(rec: ContrastRecords, k, k_inner, min_prob, method):
    """The reference algorithm with plain Python loops over records and tokens."""
    rows, horizon, vocab = rec.lp_steered.shape
    valid = []
    for r in range(rows):
        for h in range(horizon):
            if int(rec.lp_base[r, h].argmax()) in EOT:
                break  # this position and all later ones are masked
            valid.append((r, h))
    n = len(valid)
    p_s = [sum(math.exp(rec.lp_steered[r, h, v]) for r, h in valid) / n for v in range(vocab)]
    banned = {v for v in range(vocab) if v in SPECIAL or p_s[v] < min_prob}
    delta = {(r, h, v): float(rec.lp_steered[r, h, v] - rec.lp_base[r, h, v]) for r, h in valid for v in range(vocab)}
    mean = [sum(delta[r, h, v] for r, h in valid) / n for v in range(vocab)]
    if method == "vote":
        votes = [0] * vocab
        for r, h in valid:
            allowed = sorted((v for v in range(vocab) if v not in banned), key=lambda v: -delta[r, h, v])
            for v in allowed[:k_inner]:
                votes[v] += 1
        mass = [sum(math.exp(rec.lp_steered[r, h, v]) * max(delta[r, h, v], 0) for r, h in valid) if v not in banned
                else 0.0 for v in range(vocab)]
        ranked = sorted((v for v in range(vocab) if votes[v] > 0), key=lambda v: (-votes[v], -mass[v], -mean[v], v))
        return ranked[:k], [votes[v] for v in ranked[:k]], banned, n
    ranked = sorted((v for v in range(vocab) if v not in banned and mean[v] > 0), key=lambda v: (-mean[v], v))
    return ranked[:k], [mean[v] for v in ranked[:k]], banned, n


@pytest.mark.parametrize("method", ["vote", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregation_equals_slow_reference(method, seed):
    rec = _random_records(seed)
    special = torch.zeros(rec.vocab, dtype=torch.bool)
    special[list(SPECIAL)] = True
    min_prob = float(torch.quantile(rec.lp_steered.exp()[rec.valid].mean(0), 0.2))  # bans ~8 of 40 by the floor
    ids, scores, banned, n = _slow_reference(rec, 10, 7, min_prob, method)
    assert 24 < n < 48 and len(banned) >= 8 + 2  # masking and both kinds of banning are exercised
    sel = select_tokens(rec, VoteConfig(k=10, method=method, k_inner=7, min_prob=min_prob), special)
    assert sel.stats.n_valid == n
    assert set(torch.nonzero(sel.stats.banned).flatten().tolist()) == banned
    assert sel.ids == ids
    torch.testing.assert_close(torch.tensor(sel.scores), torch.tensor(scores, dtype=torch.float32), atol=1e-5, rtol=0)
    assert not set(sel.ids) & banned


def test_a_chunk_without_valid_positions_is_skipped():
    """9 prompts x 8 samples, H = 1, the last prompt's base ends its turn at once: its chunk of 8 rows is empty."""
    rec = _random_records(3, rows=72, horizon=1)
    valid = torch.ones(72, 1, dtype=torch.bool)
    valid[64:] = False
    rec = ContrastRecords(rec.lp_steered, rec.lp_base, valid, rec.prompt_index, rec.continuation, rec.prompts)
    chunked, whole = token_stats(rec, None, k_inner=5, chunk=8), token_stats(rec, None, k_inner=5, chunk=72)
    assert chunked.n_valid == 64 and torch.equal(chunked.votes, whole.votes)
    torch.testing.assert_close(chunked.mass, whole.mass)
    torch.testing.assert_close(chunked.mean_delta, whole.mean_delta)


def test_votes_by_position_and_mass_match_loops():
    rec = _random_records(2)
    stats = token_stats(rec, None, k_inner=5, min_prob=0.0)
    by_pos = torch.zeros(rec.horizon, rec.vocab, dtype=torch.long)
    mass = torch.zeros(rec.vocab)
    for r, h in rec.valid.nonzero().tolist():
        d = rec.lp_steered[r, h] - rec.lp_base[r, h]
        by_pos[h, d.topk(5).indices] += 1
        mass += rec.lp_steered[r, h].exp() * d.clamp(min=0)
    assert torch.equal(stats.votes_by_position, by_pos)
    torch.testing.assert_close(stats.mass, mass / mass.sum())
    assert int(stats.votes.sum()) == 5 * stats.n_valid


def _sparse_records(rows=16, vocab=30) -> ContrastRecords:
    """The prototype's picture: two tokens carry the teacher's push; 'junk' has larger ratios but ~no mass."""
    p_b, p_s = torch.full((vocab,), 1e-3), torch.full((vocab,), 1e-3)
    p_b[2], p_s[2] = 0.9, 0.01  # "Sure": suppressed
    p_b[4:6], p_s[4], p_s[5] = 0.01, 0.6, 0.35  # "I", "Sorry": Δ ~ +4
    p_b[10:20], p_s[10:20] = 1e-6, 1e-3 * (1 + torch.arange(10) / 10)  # junk: Δ ~ +7, 0.1-0.2 % of p_s each
    lp_b = torch.log(p_b / p_b.sum()).expand(rows, 1, vocab)
    lp_s = torch.log(p_s / p_s.sum()).expand(rows, 1, vocab)
    return ContrastRecords(lp_s, lp_b, torch.ones(rows, 1, dtype=torch.bool), torch.arange(rows),
                           torch.zeros(rows, 0, dtype=torch.long), [f"p{i}" for i in range(rows)])


def test_k_auto_keeps_only_the_tokens_carrying_the_mass():
    rec = _sparse_records()
    stats = token_stats(rec, None, k_inner=12, min_prob=1e-6)
    auto = rank_tokens(stats, "auto", share=0.95)
    assert auto.ids == [4, 5]
    assert auto.mass_share > 0.95 and auto.scores[0] > auto.scores[1]
    fixed = rank_tokens(stats, 10, "vote")  # all 12 tie on votes: the mass tie-break puts "I", "Sorry" first
    assert fixed.ids == [4, 5, *range(19, 11, -1)] and saturation(fixed) == 1.0
    assert "40% of the allowed vocabulary" in vote_warning(fixed, 12)  # K'=12 of 30 tokens
    by_mean = rank_tokens(stats, 10, "mean")  # a log-ratio ranking prefers the junk
    assert by_mean.ids == list(range(19, 9, -1)) and by_mean.mass_share < 0.05 and vote_warning(by_mean, 12) is None
    assert rank_tokens(stats, "auto", share=0.5).ids == [4]
    assert rank_tokens(stats, 3, "mass").ids == [4, 5, 19]  # the fixed-size variant of the mass ranking


def test_stability_reselects_on_disjoint_prompt_halves():
    rec = _sparse_records(rows=8)
    lp_s = rec.lp_steered.clone()
    lp_s[1::2, :, [4, 5]] = lp_s[1::2, :, [5, 4]]  # odd prompts push "Sorry" hardest, even ones "I"
    rec = ContrastRecords(lp_s, rec.lp_base, rec.valid, rec.prompt_index, rec.continuation, rec.prompts,
                          meta={"samples": 8})
    config = VoteConfig(k=2, k_inner=12, share=0.6)
    result = stability(rec, rec, torch.zeros(rec.vocab, dtype=torch.bool), config, ks=(1,))
    assert result.by_k["auto"]["jaccard_halves"] == 0.0  # {I} on one half, {Sorry} on the other
    assert result.by_k["auto"]["size"] == 2 and result.by_k["auto"]["jaccard_seeds"] == 1.0
    assert result.by_k["2"]["jaccard_halves"] == 1.0 and result.by_k["1"]["jaccard_halves"] == 0.0
    assert result.summary()["jaccard_halves"] == 1.0 and result.seeds_informative is False  # H = 1


def test_k_inner_auto_is_the_reference_on_paper_vocabularies_and_scales_down():
    # Qwen2.5/Qwen3 (151,936), Llama-3 (128,256), Gemma (262,144), Mistral/Phi-3 (32,000): the released K'=200
    assert [resolve_k_inner("auto", v) for v in (151_936, 128_256, 262_144, 32_000)] == [200] * 4
    assert resolve_k_inner("auto", 468) == 10 and resolve_k_inner("auto", 40) == 1  # the organism; tiny vocab
    assert resolve_k_inner(7, 468) == 7
    with pytest.raises(SafeSteerError, match="k_inner"):
        VoteConfig(k_inner=0)
    rec = _random_records(0)
    assert torch.equal(token_stats(rec, None, "auto", 0.0).votes,
                       token_stats(rec, None, resolve_k_inner("auto", rec.vocab), 0.0).votes)


def test_jaccard_and_ranks():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and jaccard([], []) == 1.0
    rec = _sparse_records(rows=2)
    ranks = ranks_in_records(rec, torch.zeros(rec.vocab, dtype=torch.bool), [19, 10, 4, 5, 2])
    assert ranks[0].tolist() == [1, 10, 11, 12, 30]  # junk ratios first, then "I", "Sorry"; "Sure" last


# ----------------------------------------------------------------------------------------------- on a tiny model
@pytest.fixture()
def steered(qwen2):
    model, tok = qwen2
    torch.manual_seed(3)
    return make_teacher(model, tok, "vector", Direction(torch.randn(model.config.hidden_size) * 2, 1, -1))


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_steered_and_base_passes_equal_unbatched_hooked_forwards(steered, positions):
    """Each prompt runs once for its M rows (sampling and both scoring passes): the records equal one plain forward
    per row, steered at every position or at the prompt's only, and so does the residual RMS before the final norm."""
    from safesteer_interp.core.hooks import cache_activations

    steered.positions = positions
    model, tok = steered.model, steered.tokenizer
    H, M = 3, 2
    rec = score_contrast(steered, PROMPTS, ContrastConfig(horizon=H, samples=M, batch_size=3, seed=5))
    assert rec.lp_steered.shape == (len(PROMPTS) * M, H, len(tok))
    assert (rec.lp_steered - rec.lp_base).abs().max() > 0.5  # the steering does something
    last = f"blocks.{model.config.num_hidden_layers - 1}.hook_resid_post"
    for row in (0, 3, 5, 7):
        prompt = encode_prompts(tok, [PROMPTS[int(rec.prompt_index[row])]]).input_ids  # unpadded, alone
        ids = torch.cat([prompt, rec.continuation[row][None]], 1)
        where = "all" if positions == "all" else torch.arange(ids.shape[1])[None] < prompt.shape[1]
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits[0, -H:], -1)
            with add_to_resid(model, steered.direction.vector, 1, 1.0, where), \
                    cache_activations(model, [last]) as cache:
                steer = torch.log_softmax(model(input_ids=ids).logits[0, -H:], -1)
        torch.testing.assert_close(rec.lp_steered[row], steer, atol=1e-4, rtol=0)
        torch.testing.assert_close(rec.lp_base[row], base, atol=1e-4, rtol=0)
        torch.testing.assert_close(rec.final_rms[row], cache[last][0, -H:].pow(2).mean(-1).sqrt(), atol=1e-4,
                                   rtol=1e-5)
    if positions == "all":  # and the teacher's own scoring of the same sequence gives the same numbers
        from safesteer_interp.core.chat import batch_from_ids

        own = torch.log_softmax(steered.logits(batch_from_ids(ids, torch.ones_like(ids)), last=H)[0], -1)
        torch.testing.assert_close(rec.lp_steered[row], own, atol=1e-4, rtol=0)


def test_selection_is_deterministic_for_a_seed(steered):
    cfg, sel = ContrastConfig(horizon=3, samples=3, seed=7), VoteConfig(k=8, k_inner=10)
    a = select_safety_tokens(steered, PROMPTS, cfg, sel, check_stability=False)
    b = select_safety_tokens(steered, PROMPTS, cfg, sel, check_stability=False)
    c = select_safety_tokens(steered, PROMPTS, ContrastConfig(horizon=3, samples=3, seed=8), sel,
                             check_stability=False)
    assert a.ids == b.ids and len(a.ids) == 8 and a.explanations == b.explanations
    assert torch.equal(a.records.continuation, b.records.continuation)
    assert not torch.equal(a.records.continuation, c.records.continuation)


def test_special_tokens_are_banned_and_dla_finds_an_unembedding_row(steered):
    model, tok = steered.model, steered.tokenizer
    special = special_token_mask(tok, len(tok))
    assert special[tok.convert_tokens_to_ids(["<|im_end|>", "<|pad|>", "<|im_start|>"])].all()
    assert int(special.sum()) == 5
    target = tok.convert_tokens_to_ids("sorry")
    gain = model.model.norm.weight.detach()
    vector = model.get_output_embeddings().weight[target].detach() / gain
    dla = direct_logit_attribution(model, vector, coeff=2.0, rms=4.0)
    assert int(dla.argmax()) == target and abs(float(dla.mean())) < 1e-5


def _run_folder(tmp_path, model):
    torch.manual_seed(3)
    save_direction(tmp_path, Direction(torch.randn(model.config.hidden_size) * 2, 1, -1))
    write_json(tmp_path / "direction" / "prompts.json", {"harmless_val": PROMPTS, "harmful_val": PROMPTS[:2]})


def test_run_tokens_writes_explained_artifacts(qwen2, tmp_path):
    model, tok = qwen2
    _run_folder(tmp_path, model)
    result = run_tokens(tmp_path, model, tok, contrast=ContrastConfig(horizon=2, samples=2),
                        vote=VoteConfig(k=6, k_inner=8))
    out = json.loads((tmp_path / "tokens" / "tokens.json").read_text())
    assert [t["id"] for t in out["tokens"]] == result.ids and len(out["tokens"]) == 6
    first = out["tokens"][0]
    assert {"id", "token", "votes", "mean_delta", "max_delta", "p_base", "p_steered", "votes_by_position",
            "positions", "examples", "dla", "dla_rank", "mass_share"} <= set(first)
    assert first["votes"] == sum(first["votes_by_position"]) and 1 <= len(first["examples"]) <= 3
    assert first["examples"][0]["prompt"] in PROMPTS
    assert set(out["stability"]) >= {"jaccard_halves", "jaccard_seeds", "by_k"}
    assert set(out["stability"]["by_k"]) == {"auto", "5", "20", "50", "6", "mass@5", "mass@20", "mass@50"}
    assert 0 <= out["stability"]["jaccard_halves"] <= 1 and out["sizes"]["auto"]["mass_share"] >= 0.95
    trace = [json.loads(line) for line in (tmp_path / "tokens" / "trace.jsonl").read_text().splitlines()]
    assert trace[0]["selection"] == "main" and trace[0]["token_ids"] == result.ids
    assert {"step", "horizon", "tokens", "scores", "prob_baseline", "prob_steered"} <= set(trace[0])
    for name in ("votes.png", "probs.png", "mass_curve.png", "tokens.md"):
        assert (tmp_path / "tokens" / name).stat().st_size > 500


def _tokens_app():
    from safesteer_interp.cli.tokens import tokens

    app = typer.Typer()
    app.command("tokens")(tokens)
    app.command("noop")(lambda: None)  # two commands keep `tokens` a subcommand, as in the real app
    return app


def test_cli_tokens_and_one_line_errors(tmp_path, monkeypatch):
    from safesteer_interp.testing import tiny_model

    monkeypatch.setattr("safesteer_interp.cli.options.open_model", lambda spec, *args, **kw: tiny_model("qwen2"))
    app = _tokens_app()
    missing = CliRunner().invoke(app, ["tokens", "--run", str(tmp_path), "--model", "tiny-random"])
    assert isinstance(missing.exception, SafeSteerError) and "direction.safetensors" in str(missing.exception)
    assert "\n" not in str(missing.exception)
    _run_folder(tmp_path, tiny_model("qwen2")[0])
    ok = CliRunner().invoke(app, ["tokens", "--run", str(tmp_path), "--model", "tiny-random", "--k", "auto",
                                  "--horizon", "2", "--samples", "2", "--no-stability"])
    assert ok.exit_code == 0, ok.output
    out = json.loads((tmp_path / "tokens" / "tokens.json").read_text())
    assert out["config"]["k"] == "auto" and out["sizes"]["auto"]["ids"] == [t["id"] for t in out["tokens"]]
    assert out["tokens"][0]["token"] in ok.output


def test_missing_prompts_and_system_role_give_one_line_errors(qwen2, tmp_path):
    model, tok = qwen2
    with pytest.raises(SafeSteerError, match="prompts.json"):
        default_selection_prompts(tmp_path, "harmless")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ '<|im_start|>' + m['role'] + '\n'"
                         " + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(SafeSteerError, match="system role") as err:
        make_teacher(model, tok, "prompt")
    assert "\n" not in str(err.value)


def test_method_comparison_measures_each_set_against_a_loop_reference():
    """tokens.methods: per-position contrast share, first-token probabilities and openers, by plain loops."""
    from safesteer_interp.tokens.methods import SETTINGS, by_position, compare_methods

    rec, other = _random_records(seed=3), _random_records(seed=4)
    special = torch.zeros(rec.vocab, dtype=torch.bool)
    special[list(SPECIAL)] = True
    config = VoteConfig(min_prob=0.0)

    class Tok:
        def decode(self, ids):
            return f"t{ids[0]}"

    out = compare_methods(rec, stats_for(rec, config, special), resamples(rec, other, special, config), config, Tok())
    assert list(out["methods"]) == [label for label, _, _ in SETTINGS] and out["positions"] == [1, 2, 3]
    # the loop reference of the Δ-weighted teacher mass at position h, normalised over allowed tokens
    mass = torch.zeros(rec.horizon, rec.vocab, dtype=torch.float64)
    p_t = torch.zeros(rec.horizon, rec.vocab, dtype=torch.float64)
    count = [0] * rec.horizon
    for r in range(rec.lp_steered.shape[0]):
        for h in range(rec.horizon):
            if rec.valid[r, h]:
                lp_s, lp_b = rec.lp_steered[r, h].double(), rec.lp_base[r, h].double()
                mass[h] += lp_s.exp() * (lp_s - lp_b).clamp(min=0)
                p_t[h] += lp_s.exp()
                count[h] += 1
    mass[:, special] = 0
    mass /= mass.sum(-1, keepdim=True)
    for label, row in out["methods"].items():
        ids = [int(t[1:]) for t in row["tokens"]]
        if row["size"] <= 20:
            want = [round(float(mass[h, ids].sum()), 4) for h in range(3)]
            assert row["contrast_share_by_position"] == pytest.approx(want, abs=2e-4), label
            assert row["p_teacher_first"] == pytest.approx(float(p_t[0, ids].sum()) / count[0], abs=2e-4)
        assert 0.0 <= row["jaccard_halves"] <= 1.0 and 0.0 <= row["jaccard_seeds"] <= 1.0
    # more tokens by mass never carry less; mass ranks by exactly the quantity measured
    shares = [out["methods"][k]["contrast_share"] for k in ("mass@5", "mass@20", "mass@50")]
    assert shares == sorted(shares) and out["methods"]["auto"]["contrast_share"] >= 0.95 - 1e-4
    per = by_position(rec, special)
    gain = (per["p_steered"] - per["p_base"]).masked_fill(special, -1.0)
    assert out["openers"][0]["token"] == f"t{int(gain[0].argmax())}"  # the token the teacher raises most at h=1
