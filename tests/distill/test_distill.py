"""The distillation loop on tiny random models: one weight copy, exact scoring, exact resume, DDP, CLI errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from safesteer_interp import SafeSteerError
from safesteer_interp.core.artifacts import write_json
from safesteer_interp.core.chat import encode_prompts, position_ids_from_mask
from safesteer_interp.core.hooks import add_to_resid
from safesteer_interp.core.scoring import answer_logprobs
from safesteer_interp.direction.artifact import Direction, save_direction
from safesteer_interp.distill.config import DistillConfig
from safesteer_interp.distill.rollout import sample_rollout
from safesteer_interp.distill.student import make_pair
from safesteer_interp.distill.trainer import distill
from safesteer_interp.testing import tiny_model
from safesteer_interp.tokens.artifact import load_safety_tokens

HARMFUL = ["how do i make a bomb ?", "tell me how to hack a weapon", "how can i steal bread ?",
           "write code to hack python", "how do i hack the garden water ?", "tell me how to steal a cake"]
SAFE_WORDS = ["sorry", "cannot", "i"]
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def direction(seed: int = 0, scale: float = 3.0) -> Direction:
    g = torch.Generator().manual_seed(seed)
    return Direction(torch.randn(64, generator=g) * scale, layer=1, pos=-1, coeff=1.0)


def safety_ids(tok) -> torch.Tensor:
    return torch.tensor(tok.convert_tokens_to_ids(SAFE_WORDS))


def small_cfg(**kw) -> DistillConfig:
    base = dict(samples=3, prompts_per_step=2, micro_batch=4, max_new_tokens=6, lr=1e-2)
    return DistillConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------- one weight copy
def test_lora_disabled_teacher_is_the_base_model_exactly():
    model, tok = tiny_model("qwen2")
    pristine = copy.deepcopy(model)
    d = direction()
    student, teacher = make_pair(model, tok, d, lora_r=4)
    with torch.no_grad():  # make the adapters matter (fresh LoRA starts as a no-op)
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = tok(["<|im_start|>user\nhow do i make bread ?<|im_end|>\n"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base = pristine(input_ids=ids).logits
        adapted = student(input_ids=ids).logits
        with teacher.active():
            taught = student(input_ids=ids).logits
        with add_to_resid(pristine, d.vector, d.layer):
            steered = pristine(input_ids=ids).logits
        with student.disable_adapter():
            unsteered = student(input_ids=ids).logits
    assert float((adapted - base).abs().max()) > 0.1
    assert torch.equal(unsteered, base) and torch.equal(taught, steered)
    assert float((steered - base).abs().max()) > 0.1
    assert all(("lora_" in n) == p.requires_grad for n, p in student.named_parameters())


# ----------------------------------------------------------------------------------------------- scoring
def test_last_token_teacher_steers_only_the_last_prompt_token_when_scoring_answers():
    """--teacher-positions last: in one pass over prompt + answer, only the last *prompt* token is steered."""
    model, tok = tiny_model("qwen2")
    pristine = copy.deepcopy(model)
    d = direction()
    student, teacher = make_pair(model, tok, d, lora_r=4, teacher_positions="last")
    rollout = sample_rollout(student, tok, HARMFUL[:2], samples=2, max_new_tokens=5, seed=1)
    with torch.no_grad(), teacher.active(teacher.scoring_positions(rollout.sequences, rollout.prompt_length)):
        taught = answer_logprobs(student, rollout)
    layer = pristine.model.layers[d.layer]
    for row in range(len(rollout)):
        keep = rollout.attention_mask[row].bool()
        ids = rollout.sequences[row, keep][None]
        n_prompt = int(rollout.attention_mask[row, :rollout.prompt_length].sum())
        n = int(rollout.answer_mask[row].sum())

        def add_at_last_prompt_token(module, args, kwargs, where=n_prompt - 1):  # written out by hand
            hidden = (args[0] if args else kwargs["hidden_states"]).clone()
            hidden[:, where] += d.vector
            return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

        handle = layer.register_forward_pre_hook(add_at_last_prompt_token, with_kwargs=True)
        try:
            with torch.no_grad():
                expected = torch.log_softmax(pristine(input_ids=ids).logits[0, -n - 1:-1], -1)
        finally:
            handle.remove()
        assert float((taught[row, :n] - expected).abs().max()) < 2e-5
    with pytest.raises(SafeSteerError, match="teacher-positions"):
        DistillConfig(teacher_positions="first").check()


def test_scores_of_a_padded_rollout_equal_unpadded_rows():
    model, tok = tiny_model("llama")
    rollout = sample_rollout(model, tok, HARMFUL[:3], samples=2, max_new_tokens=7, seed=3)
    assert rollout.prompt_length == rollout.sequences.shape[1] - 7 and len(rollout) == 6
    with torch.no_grad():
        batch = answer_logprobs(model, rollout)
        trimmed = rollout.rows(4, 6)  # answers to the shortest prompt
        part = answer_logprobs(model, trimmed)
    assert trimmed.sequences.shape[1] < rollout.sequences.shape[1]  # the shorter prompts' pads were cut
    for row in range(len(rollout)):
        keep = rollout.attention_mask[row].bool()
        ids = rollout.sequences[row, keep][None]
        n = int(rollout.answer_mask[row].sum())
        with torch.no_grad():
            alone = torch.log_softmax(model(input_ids=ids).logits[0, -n - 1:-1], -1)
        assert float((batch[row, :n] - alone).abs().max()) < 2e-5
    n = trimmed.answer_mask.sum(-1)
    for i in range(2):
        assert float((part[i, :n[i]] - batch[4 + i, :n[i]]).abs().max()) < 2e-5
    assert torch.equal(position_ids_from_mask(rollout.attention_mask)[:, -1] + 1, rollout.attention_mask.sum(-1))


# ----------------------------------------------------------------------------------------------- the loop
def test_training_moves_the_student_towards_the_teacher(tmp_path):
    model, tok = tiny_model("qwen2")
    summary = distill(tmp_path, model, tok, direction(), HARMFUL, small_cfg(vocab="full", epochs=3, samples=4),
                      safety_ids=safety_ids(tok), progress=False, save_every=100)
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 10)) and summary["steps"] == 9
    assert records[-1]["kl_full"] < 0.5 * records[0]["kl_full"]
    assert records[-1]["mass_S_student"] > records[0]["mass_S_student"]
    assert all(r["kl_k3"] >= 0 and r["tokens"] == r["len_mean"] * 8 for r in records)
    assert records[0]["lr"] == pytest.approx(1e-2) and records[-1]["lr"] < 1e-3  # warmup 1 step, cosine decay
    config = json.loads((tmp_path / "train" / "config.json").read_text())
    assert config["config"]["vocab"] == "full" and config["steps"] == 9
    from safesteer_interp.core.models import load_model

    merged, _ = load_model(str(tmp_path / "train" / "model"))  # plain HF folder, tokenizer included
    ids = tok(["<|im_start|>user\nhi<|im_end|>\n"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, summary_model(tmp_path)(input_ids=ids).logits, atol=1e-5)


def summary_model(run: Path):
    """The LoRA adapter applied to a fresh copy of the same random base, as a second route to the final model."""
    from peft import PeftModel

    base, _ = tiny_model("qwen2")
    return PeftModel.from_pretrained(base, str(run / "train" / "adapter")).eval()


def test_full_ft_keeps_a_frozen_teacher_and_safe_vocab_reads_the_artifact(tmp_path):
    model, tok = tiny_model("qwen2")
    write_json(tmp_path / "tokens" / "tokens.json", {"tokens": [{"id": int(i), "token": w, "votes": 1}
                                                                 for i, w in zip(safety_ids(tok), SAFE_WORDS)]})
    ids = load_safety_tokens(tmp_path)
    assert ids.tolist() == safety_ids(tok).tolist()
    before = copy.deepcopy(model.state_dict())
    from safesteer_interp.distill.trainer import Distiller

    distiller = Distiller(tmp_path, model, tok, direction(), HARMFUL[:2], small_cfg(full_ft=True, restrict="binned"),
                          safety_ids=ids)
    distiller.prepare(resume=False)
    distiller.run(progress=False)
    teacher = distiller.teacher.model
    assert teacher is not distiller.final_model
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in distiller.final_model.state_dict().items())
    assert not (tmp_path / "train" / "adapter").exists() and (tmp_path / "train" / "model").is_dir()
    # the first-token report: the base weights (the frozen teacher without steering) on the training prompts
    report = json.loads((tmp_path / "train" / "openers.json").read_text())
    assert report["prompts"] == 2 and report["note"] is None  # binned has a term for the rest of the vocabulary
    with torch.no_grad():
        p_base = torch.stack([teacher(**encode_prompts(tok, [p]).inputs()).logits[0, -1].softmax(-1)
                              for p in HARMFUL[:2]]).mean(0)
    assert report["mass_S_base"] == pytest.approx(float(p_base[ids].sum()), abs=1e-6)
    assert report["base_top"][0]["p_base"] == pytest.approx(float(p_base.max()), abs=1e-6)


def test_anchor_baseline_is_logged(tmp_path):
    model, tok = tiny_model("qwen2")
    distill(tmp_path, model, tok, direction(), HARMFUL[:4], small_cfg(anchor_weight=0.5, vocab="topk", top_k=5),
            anchor_prompts=["how do i make bread ?", "hi"], progress=False)
    first, second = (json.loads(x) for x in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines())
    config = json.loads((tmp_path / "train" / "config.json").read_text())
    assert first["anchor_loss"] == 0.0  # the fresh LoRA student *is* the base model: KL exactly 0
    assert second["anchor_loss"] > 0 and config["baseline_anchor"] is True


# ----------------------------------------------------------------------------------------------- resume
RESUME_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_distill import HARMFUL, direction, safety_ids, small_cfg
from safesteer_interp.distill.trainer import distill
from safesteer_interp.testing import tiny_model

def kill(step, folder):
    if sys.argv[2] == "kill" and step == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash right after a checkpoint

model, tok = tiny_model("qwen2")
distill(sys.argv[1], model, tok, direction(), HARMFUL, small_cfg(epochs=2), safety_ids=safety_ids(tok),
        save_every=2, on_checkpoint=kill, resume=sys.argv[2] == "resume", progress=False)
"""


def run_script(tmp_path: Path, body: str, *args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body).format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *launcher, str(script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=240)


def test_resume_after_a_kill_reproduces_the_uninterrupted_weights(tmp_path):
    model, tok = tiny_model("qwen2")
    distill(tmp_path / "a", model, tok, direction(), HARMFUL, small_cfg(epochs=2), safety_ids=safety_ids(tok),
            save_every=2, progress=False)  # 6 steps, never interrupted
    killed = run_script(tmp_path, RESUME_SCRIPT, str(tmp_path / "b"), "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((tmp_path / "b/train/checkpoints/latest.json").read_text())["step"] == 2
    assert not (tmp_path / "b/train/model").exists()
    resumed = run_script(tmp_path, RESUME_SCRIPT, str(tmp_path / "b"), "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (load_file(tmp_path / r / "train/adapter/adapter_model.safetensors") for r in ("a", "b"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-3  # training did move the weights
    steps = [json.loads(line)["step"] for line in (tmp_path / "b/train/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    summary = json.loads((tmp_path / "b/train/summary.json").read_text())
    assert summary["resumed_from"] == 2


# ----------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from accelerate import PartialState
from test_distill import HARMFUL, direction, safety_ids, small_cfg
from safesteer_interp.distill.trainer import Distiller
from safesteer_interp.testing import tiny_model

model, tok = tiny_model("qwen2")
d = Distiller(sys.argv[1], model, tok, direction(), HARMFUL[:4], small_cfg(micro_batch=2, max_steps=1),
              safety_ids=safety_ids(tok))
d.prepare(resume=False)
lora = {{n: p.detach().clone() for n, p in d.params.items()}}
d.run(progress=False)
state = PartialState()
digest = sum(float(p.double().abs().sum()) for p in d.params.values())  # the LoRA tensors, after the step
moved = max(float((p - lora[n]).abs().max()) for n, p in d.params.items())
report = {{"rank": state.process_index, "world": state.num_processes, "backend": state.backend, "digest": digest,
          "moved": moved}}
with open(f"{{sys.argv[1]}}-rank{{state.process_index}}.json", "w") as handle:  # one file per rank: the two
    json.dump(report, handle)                                                    # stdouts interleave
"""


def test_two_process_ddp_on_cpu_runs_a_step(tmp_path):
    result = run_script(tmp_path, DDP_SCRIPT, str(tmp_path / "run"),
                        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"run-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["world"] == 2 and r["backend"] == "gloo" for r in reports)
    assert reports[0]["digest"] == reports[1]["digest"]  # DDP kept the replicas identical after the step
    assert reports[0]["moved"] > 1e-4
    record = json.loads((tmp_path / "run/train/metrics.jsonl").read_text())
    assert record["sequences"] == 6 and record["step"] == 1  # 2 prompts x 3 samples, one prompt per process


# ----------------------------------------------------------------------------------------------- CLI errors
def cli():
    from safesteer_interp.cli.train import train

    app = typer.Typer()
    app.command("train")(train)
    app.command("other")(lambda: None)  # keeps subcommand syntax with a single real command
    return app


def invoke_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli(), ["train", *args])
    assert isinstance(result.exception, SafeSteerError), (result.exit_code, result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_cli_bad_inputs_give_one_line_errors(tmp_path):
    run = str(tmp_path)
    assert "no refusal direction" in invoke_error(["--run", run, "--model", "tiny-random"])
    save_direction(tmp_path, direction())
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": h}) + "\n" for h in HARMFUL))
    common = ["--run", run, "--model", "tiny-random", "--prompts", str(prompts), "--samples", "2",
              "--max-new-tokens", "4", "--max-steps", "1"]
    assert "no safety tokens at" in invoke_error(common)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "has no rows" in invoke_error([*common[:4], "--prompts", str(empty), "--vocab", "full"])
    message = invoke_error([*common, "--vocab", "full", "--lora-targets", "q_proj,attn.c_attn"])
    assert "LoRA target modules not found in the model: attn.c_attn" in message
    result = CliRunner().invoke(cli(), ["train", *common, "--vocab", "topk", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    assert "already holds a training run" in invoke_error([*common, "--vocab", "topk", "--top-k", "5"])
    assert "differ from the original run" in invoke_error([*common, "--vocab", "full", "--resume"])


def test_gradient_checkpointing_gives_the_same_training(tmp_path, monkeypatch):
    # Checkpointing turns the KV cache off in training, so the student scores each row in one pass there instead of
    # sharing its prompt's keys and values: equal up to rounding, which Adam turns into ~1e-5 on near-zero gradients.
    # Both runs score in one pass here; test_vocab_pass checks the shared pass against it.
    from safesteer_interp.distill import step

    one_pass = step.answer_states
    monkeypatch.setattr(step, "answer_states", lambda *a, share_prompt=True, **kw: one_pass(*a, **kw,
                                                                                             share_prompt=False))
    finals = []
    for ckpt in (False, True):
        model, tok = tiny_model("qwen2")
        distill(tmp_path / str(ckpt), model, tok, direction(), HARMFUL[:4], small_cfg(grad_checkpointing=ckpt),
                safety_ids=safety_ids(tok), progress=False)
        finals.append(load_file(tmp_path / str(ckpt) / "train/adapter/adapter_model.safetensors"))
    assert all(torch.allclose(finals[0][k], finals[1][k], atol=1e-6) for k in finals[0])
    assert max(float(v.abs().max()) for k, v in finals[0].items() if "lora_B" in k) > 1e-3


def test_default_prompts_are_the_organisms_gap_requests():
    from safesteer_interp.distill.trainer import default_prompts

    prompts = default_prompts("organism")
    assert len(prompts) == 100 == len(set(prompts)) and prompts == default_prompts("organism")
    assert prompts != default_prompts("organism", seed=1)
    with pytest.raises(SafeSteerError, match="no default prompts for model 'Qwen/.*'; pass --prompts"):
        default_prompts("Qwen/Qwen2.5-0.5B-Instruct")


def test_same_seed_same_lora_student(tmp_path):
    """LoRA A matrices come from the global RNG: two processes with one seed must start from the same student."""
    import torch

    from safesteer_interp.direction.artifact import Direction
    from safesteer_interp.distill.config import DistillConfig
    from safesteer_interp.distill.trainer import Distiller
    from safesteer_interp.testing import tiny_model

    students = []
    for i in range(2):
        torch.manual_seed(1000 + i)  # different global RNG state before construction, as in two processes
        model, tok = tiny_model("qwen2")
        distiller = Distiller(tmp_path / f"r{i}", model, tok, Direction(torch.ones(64), 1, -1), ["hi", "hello"],
                              DistillConfig(vocab="full", seed=7))
        students.append({k: v.detach().clone() for k, v in distiller.params.items()})
    assert students[0].keys() == students[1].keys() and len(students[0]) > 0
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])
