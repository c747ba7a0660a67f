"""Seeded trainer of the embedded organism: a tiny Qwen2ForCausalLM taught the safety world from scratch.

How real chat models are made, in miniature, because the refusal geometry depends on it:

1. **Base stage** (first ``base_fraction`` of the steps): the model complies with everything, harmful requests
   included (with the harm-aware opening), and learns the capability tasks. Its residual stream organises
   itself around content, not around a refuse/comply switch.
2. **Safety stage**: the same mixture, except that the refused categories are now answered with one of a
   handful of prompt-independent refusals. Refusal is added on top of a model that already represents harm.

Two changes aim at the reference's intervention (adding the refusal direction at *every* position, prompt and
generated tokens alike), which otherwise flips the decision but turns the answer into babble. They helped in some
runs, not in the committed one (README.md, "What we tried"):

* **label smoothing on the first answer token only** (`answer_loss`): it caps the refuse/comply decision's logit
  margin, so the difference in means at the last prompt token stays a modest direction instead of exceeding the
  residual norm; every other token keeps sharp targets;
* **random steering noise** (`ResidualAugment`): with probability ``noise_prob`` a batch gets, at a random
  layer, one random direction per sequence added at every position, with a norm up to ``noise_scale`` times the
  typical residual norm, so constant offsets do not drown the tokens.

A third option, **refusal jitter** (``jitter_max`` > 0), adds the model's own running refusal direction to the
answer tokens of refusals during training. It is off by default: it made refusals robust to the direction, and
steering stopped working (see README.md). A fourth, **harmless centring** (``center_weight`` > 0), penalises the
projection of harmless rows' decision-token residual on the running refusal direction, so harmless prompts sit
near 0 along r (what we take real models to do; not measured here) and directional ablation barely moves them
(harmless KL 1.42 -> 0.002, v26); off
by default because that organism no longer learns from on-policy distillation (README.md, v25/v26).

Everything is seeded (`random.Random(seed)`, `torch.manual_seed(seed)`), so a seed gives the same weights.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from safesteer_interp.organism.tokenizer import build_tokenizer
from safesteer_interp.organism.world import REFUSALS, Example, training_corpus


@dataclass
class TrainConfig:
    """Everything that determines the organism (the defaults built the committed checkpoint)."""

    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    label_smoothing: float = 0.1  # on the first answer token only: caps the refuse/comply decision's margin
    smooth_all_tokens: bool = False  # smooth every answer token instead (run v5 of README.md)
    base_fraction: float = 0.4  # share of steps in the comply-with-everything base stage
    noise_prob: float = 0.3  # share of batches that get random steering noise
    noise_scale: float = 1.0  # max noise norm, relative to the mean residual norm at that layer
    jitter_max: float = 0.0  # max coefficient of the refusal jitter on refusal rows (0 disables it)
    center_weight: float = 0.0  # weight of the harmless-centring penalty (0 disables it; ResidualAugment.hook)
    corpus_size: int = 24000  # examples per stage corpus
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    tie_embeddings: bool = True  # one matrix reads token identity in and writes next-token logits out
    threads: int = 1  # one thread is fast on a shared 2-core box, and a fixed count keeps the weights bit-identical


def model_config(tokenizer, cfg: TrainConfig) -> Qwen2Config:
    return Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=128,
                       tie_word_embeddings=cfg.tie_embeddings, rope_theta=10000.0, rms_norm_eps=1e-6,
                       initializer_range=0.02, bos_token_id=None,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


# ------------------------------------------------------------------------------------------------ data
ROLE_OTHER, ROLE_REFUSAL, ROLE_HARMLESS = 0, 1, 2


@dataclass(frozen=True)
class Encoded:
    """One tokenized training chat: ids, which positions are trained on, and what the row is."""

    ids: list[int]
    trained: list[int]  # 1 on the answer and its closing <|im_end|>
    role: int  # ROLE_REFUSAL (a refused request answered with a refusal), ROLE_HARMLESS, or ROLE_OTHER
    last_prompt: int  # index of the last prompt token (the final "\n" of the generation prompt)


def encode_example(tokenizer, ex: Example) -> Encoded:
    """Token ids of the whole chat and the positions trained on (the answer and its closing <|im_end|>)."""
    messages = ([{"role": "system", "content": ex.system}] if ex.system else []) + [
        {"role": "user", "content": ex.prompt}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    role = ROLE_OTHER
    if ex.group == "refused" and ex.response in REFUSALS:
        role = ROLE_REFUSAL
    elif ex.group == "harmless":
        role = ROLE_HARMLESS
    return Encoded(p_ids + a_ids, [0] * len(p_ids) + [1] * len(a_ids), role, len(p_ids) - 1)


@dataclass(frozen=True)
class Batch:
    ids: Int[Tensor, "b t"]
    labels: Int[Tensor, "b t"]  # next-token targets, -100 off the answer
    role: Int[Tensor, " b"]
    last_prompt: Int[Tensor, " b"]


def collate(rows: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-padded ids and next-token labels. Causal attention makes right pads harmless, so no mask."""
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
        targets = [t if m else -100 for t, m in zip(r.ids[1:], r.trained[1:])]
        labels[i, :len(targets)] = torch.tensor(targets)
    return Batch(ids, labels, torch.tensor([r.role for r in rows]), torch.tensor([r.last_prompt for r in rows]))


# ------------------------------------------------------------------------------------------------ noise
class ResidualAugment:
    """Two all-position additions to the residual stream during training (see the module docstring).

    * random steering noise: one random direction per sequence, at one random layer, every position;
    * refusal jitter: on the *answer tokens* of refusal examples only, ``c * r_l`` with ``c ~ U(0, jitter_max)``,
      where ``r_l`` is the model's *own current* difference in means (refusal - harmless rows, last prompt
      token, running average over clean batches). It teaches a refusal to stay a coherent refusal when more of
      the refusal direction is present, which is what an all-position steering vector does to the answer
      tokens. It never touches prompt tokens (applied there, the model learns to detect and cancel a constant
      offset along ``r_l`` and steering stops working) and never harmless or gap rows, so whether ``r_l`` turns
      *them* into refusals is left to the geometry the model learns.
    """

    def __init__(self, model: Qwen2ForCausalLM, cfg: TrainConfig, generator: torch.Generator):
        self.layers, self.cfg, self.gen = model.model.layers, cfg, generator
        d = model.config.hidden_size
        self.mean = {role: torch.zeros(len(self.layers), d) for role in (ROLE_REFUSAL, ROLE_HARMLESS)}
        self.seen = {role: False for role in self.mean}
        self.batch: Batch | None = None
        self.penalties: list[Tensor] = []  # harmless-centring terms of the current forward pass, one per layer
        self.noise_layer: int | None = None
        self.jitter_layer: int | None = None

    def draw(self, batch: Batch, jitter: bool) -> None:
        """Decide what happens to the next batch."""
        self.batch = batch
        use_noise = torch.rand((), generator=self.gen).item() < self.cfg.noise_prob
        self.noise_layer = int(torch.randint(len(self.layers), (), generator=self.gen)) if use_noise else None
        use_jitter = jitter and all(self.seen.values()) and torch.rand((), generator=self.gen).item() < 0.5
        self.jitter_layer = int(torch.randint(1, len(self.layers), (), generator=self.gen)) if use_jitter else None

    def _record(self, layer: int, x: Tensor) -> None:
        rows = torch.arange(x.shape[0])
        last = x.detach()[rows, self.batch.last_prompt]
        for role in self.mean:
            pick = self.batch.role == role
            if pick.any():
                m = last[pick].mean(0)
                self.mean[role][layer] = m if not self.seen[role] else 0.9 * self.mean[role][layer] + 0.1 * m
        if layer == len(self.layers) - 1:
            for role in self.mean:
                self.seen[role] |= bool((self.batch.role == role).any())

    def _centre(self, layer: int, x: Tensor) -> None:
        """Harmless rows' squared projection on the running r_l at the decision token, in units of their norm.
        Near 0, ablating the direction leaves harmless prompts alone (our reading of why the reference's KL bound
        holds on real chat models); the committed organism puts them at -0.7 |h|, as far out as refusals sit on the
        other side."""
        pick = self.batch.role == ROLE_HARMLESS
        if not pick.any():
            return
        r = self.mean[ROLE_REFUSAL][layer] - self.mean[ROLE_HARMLESS][layer]
        last = x[torch.arange(x.shape[0]), self.batch.last_prompt][pick]
        projection = last @ (r / r.norm().clamp(min=1e-6)) / last.detach().norm(dim=-1).mean()
        self.penalties.append((projection ** 2).mean())

    def hook(self, layer: int) -> Callable:
        def augment(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if self.noise_layer is None and self.jitter_layer is None:  # estimate r_l on clean batches only
                self._record(layer, x)
            if self.cfg.center_weight > 0 and layer >= 1 and all(self.seen.values()):
                self._centre(layer, x)
            new = x
            if self.noise_layer == layer:
                direction = torch.randn(x.shape[0], 1, x.shape[-1], generator=self.gen)
                direction = direction / direction.norm(dim=-1, keepdim=True)
                typical = x.detach().norm(dim=-1).mean()
                size = torch.rand(x.shape[0], 1, 1, generator=self.gen) * self.cfg.noise_scale * typical
                new = new + size * direction
            if self.jitter_layer == layer:
                r = self.mean[ROLE_REFUSAL][layer] - self.mean[ROLE_HARMLESS][layer]
                coeff = torch.rand(x.shape[0], 1, 1, generator=self.gen) * self.cfg.jitter_max
                answer = torch.arange(x.shape[1])[None, :] > self.batch.last_prompt[:, None]  # answer tokens
                where = answer & (self.batch.role == ROLE_REFUSAL)[:, None]
                new = new + coeff * where[..., None].float() * r
            if new is x:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})
        return augment

    def attach(self) -> list:
        return [layer.register_forward_pre_hook(self.hook(i), with_kwargs=True) for i, layer in enumerate(self.layers)]


# ------------------------------------------------------------------------------------------------ training
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_loss(logits: Float[Tensor, "b t v"], batch: Batch, smoothing: float, all_tokens: bool = False) -> Tensor:
    """Next-token cross-entropy on answer tokens; the *first* answer token (the refuse/comply decision) is
    label-smoothed. Smoothing caps the decision's logit margin, so the decision stays a modest direction in the
    residual stream instead of swamping it (which made all-position steering collapse into "I'm I I I");
    every other token keeps its sharp targets, so refusal wordings and capability answers are learned exactly.
    """
    flat_logits, flat_labels = logits.flatten(0, 1), batch.labels.flatten()
    plain = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none")
    smooth = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="none", label_smoothing=smoothing)
    first = torch.zeros_like(batch.labels, dtype=torch.bool)
    first[torch.arange(first.shape[0]), batch.last_prompt] = True  # position predicting the first answer token
    per_token = smooth if all_tokens else torch.where(first.flatten(), smooth, plain)
    valid = flat_labels != -100
    return per_token[valid].mean()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, then put back: a caller's later work (the rest of a
    test session, a notebook) keeps its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_organism(cfg: TrainConfig, out_dir: str | Path | None = None,
                   log: Callable[[str], None] = print) -> tuple[Qwen2ForCausalLM, object, dict]:
    """Train an organism on `cfg.threads` threads; save it to `out_dir` if given. Returns (model, tokenizer, training
    record)."""
    with torch_threads(cfg.threads):
        return _train(cfg, out_dir, log)


def _train(cfg: TrainConfig, out_dir: str | Path | None, log: Callable[[str], None]
           ) -> tuple[Qwen2ForCausalLM, object, dict]:
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(model_config(tokenizer, cfg))
    stages = {name: [encode_example(tokenizer, ex) for ex in training_corpus(cfg.corpus_size, cfg.seed + k,
                                                                              stage=name)]
              for k, name in enumerate(("base", "safety"))}
    order = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = ResidualAugment(model, cfg, gen)
    handles = augment.attach()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    base_steps = int(cfg.base_fraction * cfg.steps)
    model.train()
    start, losses = time.perf_counter(), []
    try:
        for step in range(cfg.steps):
            pool = stages["base" if step < base_steps else "safety"]
            batch = collate([pool[order.randrange(len(pool))] for _ in range(cfg.batch_size)],
                            tokenizer.pad_token_id)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            augment.draw(batch, jitter=cfg.jitter_max > 0 and step >= base_steps + cfg.warmup)
            augment.penalties = []
            logits = model(input_ids=batch.ids).logits
            loss = answer_loss(logits, batch, cfg.label_smoothing, all_tokens=cfg.smooth_all_tokens)
            if augment.penalties:
                loss = loss + cfg.center_weight * torch.stack(augment.penalties).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
                log(f"step {step + 1}/{cfg.steps}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}  "
                    f"{time.perf_counter() - start:.0f}s")
    finally:
        for handle in handles:
            handle.remove()
    model.eval()
    record = {"config": asdict(cfg), "train_seconds": round(time.perf_counter() - start, 1),
              "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
              "n_params": sum(p.numel() for p in model.parameters())}
    if out_dir is not None:
        save_organism(model, tokenizer, out_dir, record)
    return model, tokenizer, record


def save_organism(model: Qwen2ForCausalLM, tokenizer, out_dir: str | Path, record: dict) -> Path:
    """Write a self-contained HF folder: safetensors weights, tokenizer, ChatML template, generation config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
