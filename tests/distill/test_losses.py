"""Every divergence, restriction and reduction of `losses` against hand computation (plain Python floats)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from safesteer_interp import SafeSteerError
from safesteer_interp.distill.losses import (
    generalized_jsd,
    loss_window,
    reduce_loss,
    restrict,
    reverse_kl,
    sequence_means,
    token_index,
    token_loss,
)

VOCAB, S = 7, [4, 1, 6]


def logps(seed: int, batch: int = 2, pos: int = 3, vocab: int = VOCAB, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.log_softmax(torch.randn(batch, pos, vocab, generator=g) * scale, -1)
    t = torch.log_softmax(torch.randn(batch, pos, vocab, generator=g) * scale, -1)
    return s, t


def hand_loss(s_row: list[float], t_row: list[float], vocab: str, kind: str, how: str, alpha: float, k: int) -> float:
    """One position, by the formulas in words: choose the set, build the bins, sum the divergence."""
    p = [math.exp(x) for x in s_row]
    q = [math.exp(x) for x in t_row]
    if vocab == "full":
        chosen = list(range(len(p)))
    elif vocab == "safe":
        chosen = S
    else:  # the teacher's k most likely tokens
        chosen = sorted(range(len(q)), key=lambda v: -q[v])[:k]
    ps, qs = [p[v] for v in chosen], [q[v] for v in chosen]
    if vocab != "full" and how == "renorm":
        ps, qs = [x / sum(ps) for x in ps], [x / sum(qs) for x in qs]
    if vocab != "full" and how == "binned":
        rest = [v for v in range(len(p)) if v not in chosen]
        ps, qs = ps + [sum(p[v] for v in rest)], qs + [sum(q[v] for v in rest)]
    rev = sum(a * math.log(a / b) for a, b in zip(ps, qs, strict=True))
    fwd = sum(b * math.log(b / a) for a, b in zip(ps, qs, strict=True))
    if kind == "reverse":
        return rev
    if kind == "forward":
        return fwd
    m = [(1 - alpha) * a + alpha * b for a, b in zip(ps, qs, strict=True)]
    return (alpha * sum(b * math.log(b / c) for b, c in zip(qs, m, strict=True))
            + (1 - alpha) * sum(a * math.log(a / c) for a, c in zip(ps, m, strict=True)))


@pytest.mark.parametrize(("vocab", "kind", "how"), list(itertools.product(("full", "topk", "safe"),
                                                                          ("reverse", "forward", "jsd"),
                                                                          ("paper", "renorm", "binned"))))
def test_every_loss_matches_hand_computation(vocab, kind, how):
    s, t = logps(0)
    s, t = s.double(), t.double()
    alpha, k = 0.3, 3
    got = token_loss(s, t, vocab=vocab, kind=kind, how=how, safety_ids=torch.tensor(S), top_k=k, alpha=alpha)
    assert got.shape == (2, 3)
    for b, i in itertools.product(range(2), range(3)):
        want = hand_loss(s[b, i].tolist(), t[b, i].tolist(), vocab, kind, how, alpha, k)
        assert abs(float(got[b, i]) - want) <= 1e-6, (b, i, float(got[b, i]), want)


def test_float32_losses_match_hand_computation():
    s, t = logps(1)
    got = token_loss(s, t, vocab="safe", kind="reverse", how="paper", safety_ids=torch.tensor(S))
    want = [hand_loss(s[0, i].tolist(), t[0, i].tolist(), "safe", "reverse", "paper", 0, 0) for i in range(3)]
    assert torch.allclose(got[0].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)


def test_full_reverse_kl_equals_torch_kl_div():
    s, t = logps(2, vocab=50)
    ours = token_loss(s, t, vocab="full", kind="reverse")
    # kl_div(input, target) = p_target * (log p_target - input): the student is the target for reverse KL
    torch_rev = F.kl_div(t, s, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(ours, torch_rev, atol=1e-7, rtol=0) and float(ours.min()) > 0
    torch_fwd = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(token_loss(s, t, vocab="full", kind="forward"), torch_fwd, atol=1e-7, rtol=0)


def test_binned_is_a_divergence():
    ids = torch.tensor(S)
    for seed in range(20):
        s, t = logps(seed, batch=4, pos=5, vocab=11, scale=3.0)
        for kind in ("reverse", "forward", "jsd"):
            value = token_loss(s, t, vocab="safe", kind=kind, how="binned", safety_ids=ids)
            assert float(value.min()) >= 0.0
    s, t = logps(3)
    assert float(token_loss(s, s, vocab="safe", how="binned", safety_ids=ids).abs().max()) == 0.0
    # Same mass on each token of S and on the rest, but a different split *inside* the rest: binned sees no
    # difference (0), the full-vocabulary KL does.
    p = torch.tensor([0.1, 0.2, 0.05, 0.05, 0.3, 0.1, 0.2]).log()
    q = torch.tensor([0.15, 0.2, 0.0, 0.05, 0.3, 0.1, 0.2]).clamp(min=1e-30).log()  # token 2's mass moved to 0
    p, q = p.view(1, 1, -1), q.view(1, 1, -1)
    assert float(token_loss(p, q, vocab="safe", how="binned", safety_ids=ids).abs()) < 1e-6
    assert float(token_loss(p, q, vocab="full")) > 0.05
    moved = torch.tensor([0.1, 0.2, 0.05, 0.05, 0.25, 0.15, 0.2]).log().view(1, 1, -1)  # S mass changes
    assert float(token_loss(p, moved, vocab="safe", how="binned", safety_ids=ids)) > 1e-3


def test_paper_partial_sum_can_be_negative():
    # The student puts less mass than the teacher on every token of S: each p log(p/q) term is negative.
    p = torch.tensor([0.3, 0.05, 0.2, 0.2, 0.05, 0.15, 0.05]).log().view(1, 1, -1)
    q = torch.tensor([0.1, 0.2, 0.1, 0.1, 0.3, 0.1, 0.1]).log().view(1, 1, -1)
    got = float(token_loss(p, q, vocab="safe", how="paper", safety_ids=torch.tensor(S)))
    want = 0.05 * math.log(0.05 / 0.3) + 0.05 * math.log(0.05 / 0.2) + 0.05 * math.log(0.05 / 0.1)
    assert abs(got - want) < 1e-6 and got < -0.1
    # ... and it is not minimised at p = q: the per-token minimum is at p = q / e.
    assert float(token_loss(q, q, vocab="safe", how="paper", safety_ids=torch.tensor(S))) == 0.0


@pytest.mark.parametrize("how", ["paper", "binned"])
def test_where_each_restriction_leaves_a_free_student(how):
    """Minimise the loss over free logits of one position. `paper` ends with every S token at p_teacher/e, so S never
    holds more than 1/e of the mass (a sampled refusal opener at most ~37 % of the time) and the tokens outside S
    keep their base proportions; `binned` ends at the teacher's S tokens and rest-of-vocabulary mass."""
    teacher = torch.tensor([0.70, 0.20, 0.02, 0.08]).log().view(1, 1, -1)  # S = {0, 1}: the refusal openers
    base = torch.tensor([0.02, 0.01, 0.90, 0.07])  # 2: the compliance opener, outside S
    logits = base.log().view(1, 1, -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=0.05)
    for _ in range(3000):
        optimizer.zero_grad()
        token_loss(logits.log_softmax(-1), teacher, vocab="safe", how=how, safety_ids=torch.tensor([0, 1])).sum(
        ).backward()
        optimizer.step()
    p = logits.detach().softmax(-1).flatten()
    if how == "paper":
        torch.testing.assert_close(p[:2], torch.tensor([0.70, 0.20]) / math.e, atol=2e-3, rtol=0)
        assert float(p[:2].sum()) < 1 / math.e
        assert float(p[2] / p[3]) == pytest.approx(0.90 / 0.07, rel=1e-3)  # outside S: only shrunk together
        assert float(p[2]) > float(p[0])  # the compliance opener stays the argmax: greedy decoding complies
    else:
        torch.testing.assert_close(p[:2], torch.tensor([0.70, 0.20]), atol=2e-3, rtol=0)


def test_jsd_ends_and_symmetry():
    s, t = logps(4)
    assert torch.equal(generalized_jsd(s, t, 1.0), reverse_kl(s, t))
    assert torch.allclose(generalized_jsd(s, t, 0.0), reverse_kl(t, s))
    assert torch.allclose(generalized_jsd(s, t, 0.5), generalized_jsd(t, s, 0.5), atol=1e-7)
    bound = math.log(2)  # JSD(0.5) <= log 2
    assert float(generalized_jsd(s, t, 0.5).max()) <= bound


def test_rest_bucket_is_exact_when_the_set_holds_almost_all_mass():
    logits = torch.zeros(1, 1, 9)
    logits[..., 0] = 30.0  # token 0 holds 1 - 8e-13 of the mass
    lp = torch.log_softmax(logits, -1)
    s, _ = restrict(lp, lp, token_index(lp, "safe", torch.tensor([0])), "binned")
    exact = math.log(8 * math.exp(-30) / (math.exp(30 - 30) + 8 * math.exp(-30)))
    assert abs(float(s[0, 0, 1]) - exact) < 1e-4  # log1p(-exp(lse)) would give -inf here


def test_gradients_are_finite_for_every_variant():
    for vocab, how in itertools.product(("full", "topk", "safe"), ("paper", "renorm", "binned")):
        logits = torch.randn(2, 3, VOCAB, requires_grad=True)
        _, t = logps(5)
        loss = token_loss(torch.log_softmax(logits, -1), t, vocab=vocab, how=how, safety_ids=torch.tensor(S),
                          top_k=VOCAB).sum()
        loss.backward()
        assert torch.isfinite(logits.grad).all(), (vocab, how)


def test_reduction_is_per_sequence_then_batch_mean():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert sequence_means(per_token, mask).tolist() == [2.0, 10.0]
    assert float(reduce_loss(per_token, mask)) == 6.0
    # micro-batches divided by the whole step's sequence count add up to the step mean
    halves = reduce_loss(per_token[:1], mask[:1], 2) + reduce_loss(per_token[1:], mask[1:], 2)
    assert float(halves) == 6.0
    empty = torch.zeros(1, 4, dtype=torch.bool)
    assert float(reduce_loss(per_token[:1], empty)) == 0.0


def test_loss_window_skip_keep():
    answer = torch.tensor([[True, True, True, True, False], [True, True, False, False, False]])
    assert loss_window(answer, 1, 3).tolist() == [[False, True, True, False, False], [False, True, False, False, False]]
    assert loss_window(answer, 2, 0).tolist() == [[False, False, True, True, False], [False] * 5]
    assert torch.equal(loss_window(answer), answer)
    with pytest.raises(SafeSteerError, match="loss window"):
        loss_window(answer, 3, 2)


def test_bad_modes_are_one_line_errors():
    s, t = logps(6)
    with pytest.raises(SafeSteerError, match="needs a non-empty safety-token set"):
        token_loss(s, t, vocab="safe")
    with pytest.raises(SafeSteerError, match="top-k 99 must be in 1..7"):
        token_loss(s, t, vocab="topk", top_k=99)
    with pytest.raises(SafeSteerError, match="unknown divergence"):
        token_loss(s, t, vocab="full", kind="tv")
    with pytest.raises(SafeSteerError, match="alpha"):
        generalized_jsd(s, t, 1.5)


def test_step_statistics_equal_the_full_tensor_formulas_whatever_the_chunking():
    """`rollout_stats` builds its full-vocabulary terms a few rows at a time; the sums must not depend on that."""
    from safesteer_interp.core.generation import Generation
    from safesteer_interp.distill.metrics import rollout_stats

    g = torch.Generator().manual_seed(3)
    b, t, v, prompt = 5, 6, 30, 4
    s = torch.log_softmax(torch.randn(b, t, v, generator=g, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.randn(b, t, v, generator=g, dtype=torch.float64), -1)
    sequences = torch.randint(3, v, (b, prompt + t), generator=g)
    attention = torch.ones(b, prompt + t, dtype=torch.long)
    attention[1, -2:] = 0  # a shorter answer
    sequences[0, prompt + 2] = 2  # an end-of-turn token
    rollout = Generation(sequences, attention, prompt, torch.arange(b))
    mask = rollout.answer_mask
    ids = torch.tensor([4, 9, 17])
    w = mask.double()
    p = s.exp()
    answers = sequences[:, prompt:, None]
    log_ratio = (q.gather(-1, answers) - s.gather(-1, answers))[..., 0]
    expected = {"tokens": float(w.sum()), "kl_k3": float(((log_ratio.exp() - 1 - log_ratio) * w).sum()),
                "kl_full": float(((p * (s - q)).sum(-1) * w).sum()), "entropy": float((-(p * s).sum(-1) * w).sum()),
                "kl_on_S": float(((p * (s - q))[..., ids].sum(-1) * w).sum()),
                "mass_S_student": float((p[..., ids].sum(-1) * w).sum()),
                "mass_S_teacher": float((q.exp()[..., ids].sum(-1) * w).sum()),
                "first_mass_S_student": float(p[:, 0, ids].sum()),
                "first_mass_S_teacher": float(q.exp()[:, 0, ids].sum()),
                "finished": 1.0, "length": float(mask.sum())}
    for rows in (1, 2, b):
        got = rollout_stats(s, q, rollout, mask, ids, [2], rows_per_chunk=rows)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), (rows, key)
