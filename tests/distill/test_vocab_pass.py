"""The lean step computes what the full-tensor step computed: the chunked vocabulary pass against full [batch, pos,
vocab] log-probs, prompt-shared hidden states against one pass per row, shared-prefill and merged-LoRA sampling
against plain `generate`, and one micro-batch of `distill_term` against the formulas of `losses`."""

from __future__ import annotations

import itertools

import pytest
import torch

from safesteer_interp.core.chat import encode_prompts
from safesteer_interp.core.generation import Generation, generate
from safesteer_interp.core.scoring import answer_logprobs, answer_states, logits_from_states
from safesteer_interp.direction.artifact import Direction
from safesteer_interp.distill import vocab_pass as vp
from safesteer_interp.distill.losses import loss_window, reduce_loss, token_loss
from safesteer_interp.distill.metrics import StepStats, rollout_stats
from safesteer_interp.distill.rollout import sample_rollout
from safesteer_interp.distill.step import distill_term, rollouts
from safesteer_interp.distill.student import make_pair, merged_adapters
from safesteer_interp.distill.trainer import Distiller
from safesteer_interp.testing import ARCHITECTURES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
HARMFUL = ["how do i make a bomb ?", "tell me how to hack a weapon now please", "steal bread"]
S = [4, 9, 17, 30]


def random_lora(student, seed: int = 0, scale: float = 0.3) -> None:
    """Make the adapters matter (a fresh LoRA student is exactly the base model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def padded_rollout(vocab: int, batch: int = 5, prompt: int = 4, new: int = 7, seed: int = 0) -> Generation:
    """Random ids with ragged answers (rows end early), a first column always inside the answer."""
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(0, vocab, (batch, prompt + new), generator=g)
    attention = torch.ones(batch, prompt + new, dtype=torch.long)
    for row, length in enumerate([new, 2, 5, 1, new][:batch]):
        attention[row, prompt + length:] = 0
    attention[1, :2] = 0  # a left-padded prompt
    return Generation(sequences, attention, prompt, torch.arange(batch))


# ----------------------------------------------------------------------------------------------- vocabulary pass
CASES = [*itertools.product(["safe"], ["paper", "renorm", "binned"], ["reverse"]),
         ("safe", "paper", "forward"), ("safe", "binned", "jsd"), ("topk", "paper", "reverse"),
         ("full", "paper", "reverse"), ("full", "paper", "jsd")]


@pytest.mark.parametrize(("vocab", "how", "kind"), CASES)
def test_chunked_set_loss_equals_the_full_vocabulary_computation(monkeypatch, vocab, how, kind):
    """float64, random states through two real heads, ragged answers and a loss window, 3 positions per chunk: the
    loss, its gradient w.r.t. the states and every statistic equal those of full [batch, pos, vocab] log-softmaxes,
    and nothing of [positions, vocab] size is saved for backward (only chunk-sized temporaries)."""
    student, _ = tiny_model("qwen2", seed=0)
    teacher, _ = tiny_model("qwen2", seed=1)
    student, teacher = student.double(), teacher.double()
    n_vocab = student.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(vp, "CHUNK_LOGITS", 3 * n_vocab)
    rollout = padded_rollout(n_vocab)
    mask = loss_window(rollout.answer_mask, skip=1)  # position 0 still counts in the first-token statistics
    g = torch.Generator().manual_seed(1)
    states = (torch.randn(5, 7, 64, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t_states = torch.randn(5, 7, 64, generator=g, dtype=torch.float64) * 3
    spec = vp.LossSpec(vocab, kind, how, torch.tensor(S), top_k=6, alpha=0.3, temperature=0.7)

    s_logp = torch.log_softmax(logits_from_states(student, states) / 0.7, -1)
    with torch.no_grad():
        t_logp = torch.log_softmax(logits_from_states(teacher, t_states) / 0.7, -1)
    per_token = token_loss(s_logp, t_logp, vocab=vocab, kind=kind, how=how, safety_ids=torch.tensor(S), top_k=6,
                           alpha=0.3)
    want = reduce_loss(per_token, mask, 8)
    (want_grad,) = torch.autograd.grad(want, states)
    want_stats = rollout_stats(s_logp.detach(), t_logp, rollout, mask, torch.tensor(S), [2])

    saved: list[torch.Size] = []
    head = student.get_output_embeddings().weight.data_ptr()

    def pack(x):
        if x.data_ptr() != head:  # the head's weight (or its transpose) is not an activation
            saved.append(x.shape)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, sums = vp.vocab_pass(student, teacher, states, t_states, rollout, mask, 8, spec)
    (grad,) = torch.autograd.grad(loss, states)
    assert abs(float(loss.detach() - want.detach())) <= 1e-6 and float(want.detach().abs()) > 1e-3
    assert float((grad - want_grad).abs().max()) <= 1e-6 and float(want_grad.abs().max()) > 1e-4
    for key in ("tokens", "kl_k3", "kl_full", "entropy", "kl_on_S", "mass_S_student", "mass_S_teacher",
                "first_mass_S_student", "first_mass_S_teacher"):
        assert sums[key] == pytest.approx(want_stats[key], rel=1e-9, abs=1e-12), key
    positions = int((mask | (torch.arange(7) == 0)).sum())
    over_vocab = [shape.numel() for shape in saved if shape[-1] == n_vocab]  # logits, log-probs and their products
    assert over_vocab and max(over_vocab) <= 2 * 3 * n_vocab < positions * n_vocab  # jsd stacks two chunk tensors


def test_a_trained_head_gets_the_same_gradient():
    """--full-ft trains the (tied) head too: its gradient is taken chunk by chunk as well."""
    student, _ = tiny_model("qwen2", seed=0)
    student = student.double()
    head = student.get_output_embeddings().weight
    rollout = padded_rollout(head.shape[0])
    g = torch.Generator().manual_seed(2)
    states, t_states = (torch.randn(5, 7, 64, generator=g, dtype=torch.float64) for _ in range(2))
    spec = vp.LossSpec("safe", "reverse", "binned", torch.tensor(S))
    loss, _ = vp.vocab_pass(student, student, states, t_states, rollout, rollout.answer_mask, 5, spec, stats=False)
    (ours,) = torch.autograd.grad(loss, head)
    s_logp = torch.log_softmax(logits_from_states(student, states), -1)
    t_logp = torch.log_softmax(logits_from_states(student, t_states), -1).detach()
    want = reduce_loss(token_loss(s_logp, t_logp, how="binned", safety_ids=torch.tensor(S)), rollout.answer_mask)
    (expected,) = torch.autograd.grad(want, head)
    assert float((ours - expected).abs().max()) <= 1e-9 and float(expected.abs().max()) > 1e-4


# ----------------------------------------------------------------------------------------------- hidden states
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_prompt_states_score_like_one_pass_per_row(arch):
    """Each prompt's keys and values computed once and shared by its samples give the log-probs of the plain scoring
    pass (teacher views included) and the same LoRA gradients."""
    model, tok = tiny_model(arch)
    d = Direction(torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3, 1, -1)
    student, teacher = make_pair(model, tok, d, lora_r=4, teacher_positions="prompt")
    random_lora(student)
    rollout = sample_rollout(student, tok, HARMFUL, samples=3, max_new_tokens=6, seed=2)
    n = rollout.answer_mask
    with torch.no_grad():
        for positions in ("prompt", "last", "all"):
            teacher.positions = positions

            def view(ids, prompt_columns):
                return teacher.active(teacher.scoring_positions(ids, prompt_columns))

            with view(rollout.sequences, rollout.prompt_length):
                want = answer_logprobs(student, rollout)
            got = torch.log_softmax(logits_from_states(student, answer_states(student, rollout, view)).float(), -1)
            assert float((got - want)[n].abs().max()) < 2e-5, (arch, positions)
    grads = []
    for share in (True, False):
        student.zero_grad()
        states = answer_states(student, rollout, share_prompt=share)
        (torch.log_softmax(logits_from_states(student, states), -1)[n][:, S].sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.requires_grad]))
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-4 * float(grads[1].abs().max())


# ----------------------------------------------------------------------------------------------- sampling
def test_shared_prefill_and_merged_adapters_sample_the_same_tokens():
    model, tok = tiny_model("llama")
    student, _ = make_pair(model, tok, Direction(torch.zeros(64), 1, -1), lora_r=4)
    random_lora(student, scale=0.5)
    base = {n: p for n, p in student.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in base.items()}
    batch = encode_prompts(tok, HARMFUL)
    plain = generate(student, tok, batch, max_new_tokens=8, do_sample=True, num_return_sequences=4, seed=3)
    shared = sample_rollout(student, tok, HARMFUL, samples=4, max_new_tokens=8, seed=3)
    assert torch.equal(plain.sequences, shared.sequences) and torch.equal(plain.prompt_index, shared.prompt_index)
    with merged_adapters(student):  # plain layers holding W + delta: no LoRA module left to call
        merged = dict(student.named_parameters())
        assert not any("lora_" in n for n in merged)
        assert any(not torch.equal(merged[n.replace(".base_layer", "")], before[n]) for n in base if "base_layer" in n)
    after = dict(student.named_parameters())
    assert all(after[n] is p and torch.equal(p, before[n]) for n, p in base.items())  # the very tensors, bit-exact
    assert plain.answer_mask.sum() > len(plain)  # answers longer than one token were compared


# ----------------------------------------------------------------------------------------------- one micro-batch
@pytest.mark.parametrize(("vocab", "how"), [("safe", "paper"), ("safe", "binned"), ("full", "paper")])
def test_distill_term_equals_the_full_tensor_formulas(tmp_path, vocab, how):
    """The step's micro-batch (shared prompts, chunked vocabulary pass) against `answer_logprobs` of both models +
    `token_loss` + `reduce_loss` + `rollout_stats`: the same loss, LoRA gradients and statistics."""
    from safesteer_interp.distill.config import DistillConfig

    model, tok = tiny_model("qwen2")
    cfg = DistillConfig(vocab=vocab, restrict=how, samples=3, prompts_per_step=2, micro_batch=6, max_new_tokens=6,
                        teacher_positions="prompt")
    d = Direction(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3, 1, -1)
    t = Distiller(tmp_path, model, tok, d, HARMFUL[:2] * 2, cfg, safety_ids=torch.tensor(S))
    t.prepare(resume=False)
    random_lora(t.student)
    rollout, _, n_sequences = rollouts(t, 0)[0]
    stats = StepStats()
    t.optimizer.zero_grad()
    distill_term(t, rollout, n_sequences, True, stats)
    ours = {n: p.grad.clone() for n, p in t.params.items()}
    t.optimizer.zero_grad()
    with torch.no_grad(), t.teacher.active(t.teacher.scoring_positions(rollout.sequences, rollout.prompt_length)):
        teacher_logp = answer_logprobs(t.student, rollout)
    student_logp = answer_logprobs(t.student, rollout)
    mask = rollout.answer_mask
    loss = reduce_loss(token_loss(student_logp, teacher_logp, vocab=vocab, how=how, safety_ids=torch.tensor(S)),
                       mask, n_sequences)
    loss.backward()
    assert stats.loss == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-7)
    scale = max(float(p.grad.abs().max()) for p in t.params.values())
    assert scale > 1e-4
    assert max(float((ours[n] - p.grad).abs().max()) for n, p in t.params.items()) <= 1e-4 * scale
    want = rollout_stats(student_logp.detach(), teacher_logp, rollout, mask, torch.tensor(S), t.eos)
    for key in ("tokens", "kl_k3", "kl_full", "entropy", "kl_on_S", "mass_S_student", "first_mass_S_teacher",
                "length", "finished"):
        assert stats.sums[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
