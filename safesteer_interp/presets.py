"""Presets: the reference's released per-model hyper-parameters (`scripts/run_*.sh`, reference §2.4), by name.

`--preset NAME` fills every option the user did not pass; an explicit flag always wins, and without a preset the
package defaults apply unchanged. Each stage records the preset and the values it resolved in the JSON it writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from safesteer_interp.errors import SafeSteerError

SOURCE = ("reference §2.4: SafeSteer scripts/run_*.sh (lr, H, min steered prob per model; K 50, vote, M 8, K' 200, "
          "T 1, top-p 1, full fine-tuning, prompt/completion 512/512) and §2.3 main.py (warmup 0.1, cosine, grad "
          "clip 1, bf16, 4 prompts x 8 samples per step, seed 42, coeff 1.0, 100 PKU-SafeRLHF prompts)")


@dataclass(frozen=True)
class Preset:
    """One released configuration. Fields without a stage option are recorded for reference only."""

    name: str
    model: str  # hub id
    script: str  # the reference script it comes from
    lr: float
    horizon: int  # H, safe_token_horizon
    min_prob: float  # min_steered_prob
    params_b: float  # parameters in billions (for the memory estimate only)
    k: int = 50  # voca_selection_num
    method: str = "vote"
    samples: int = 8  # M: selection trajectories per prompt and training answers per prompt
    k_inner: int = 200  # K', vote_top_k_inner
    temperature: float = 1.0
    top_p: float = 1.0
    full_ft: bool = True
    max_prompt_length: int = 512  # recorded only: our loop never truncates prompts
    max_new_tokens: int = 512  # max_completion_length
    epochs: int = 1
    prompts_per_step: int = 4  # 32 completions per step = 4 prompts x 8 samples
    warmup_ratio: float = 0.1
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = True
    dtype: str = "bfloat16"  # the reference trains bf16 weights directly (HF Trainer, torch_dtype=bfloat16)
    coeff: float = 1.0
    grad_checkpointing: bool = True  # DistilConfig's default (memory only: the gradient is the same)
    n_train: int = 128
    n_val: int = 32
    prompts: str = "pku-saferlhf"  # training prompts: a seeded sample, not the reference's exact 100-prompt file
    n_prompts: int = 100


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("qwen3-4b", "Qwen/Qwen3-4B-Instruct-2507", "run_qwen3_4b.sh", 1e-5, 7, 1e-8, 4.02),
    Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "run_qwen25_7b.sh", 1e-5, 7, 1e-8, 7.62),
    Preset("llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", "run_llama3_8b.sh", 1e-6, 5, 1e-7, 8.03),
    Preset("llama3.2-3b", "meta-llama/Llama-3.2-3B-Instruct", "run_llama32_3b.sh", 1e-6, 5, 1e-7, 3.21),
)}
PRESET_NAMES = ", ".join(PRESETS)  # for help texts and errors

# stage -> CLI option -> (Preset field, package default used when neither a flag nor a preset gives a value).
# The package defaults must equal the commands' own defaults: without --preset nothing changes.
STAGE_OPTIONS: dict[str, dict[str, tuple[str, object]]] = {
    "direction": {"model": ("model", "organism")},
    "tokens": {"model": ("model", None), "k": ("k", "50"), "horizon": ("horizon", 5), "samples": ("samples", 8),
               "method": ("method", "vote"), "k_inner": ("k_inner", "auto"), "min_prob": ("min_prob", 1e-6)},
    "train": {"model": ("model", "organism"), "prompts": ("prompts", None), "n_prompts": ("n_prompts", None),
              "lr": ("lr", None), "full_ft": ("full_ft", False), "samples": ("samples", 8),
              "max_new_tokens": ("max_new_tokens", 40), "prompts_per_step": ("prompts_per_step", 2),
              "grad_checkpointing": ("grad_checkpointing", False), "dtype": ("dtype", None)},
}

# An option tied to another takes the preset's value only when that one did too: `--prompts my.jsonl` with a preset
# keeps all of my.jsonl instead of sampling the preset's 100.
TIED = {"n_prompts": "prompts"}


def get_preset(name: str) -> Preset:
    key = name.strip().lower()
    if key not in PRESETS:
        raise SafeSteerError(f"unknown preset '{name}'; valid presets: {PRESET_NAMES}")
    return PRESETS[key]


def resolve(stage: str, preset: str | None, **given) -> tuple[dict, dict]:
    """(values, record) for the options of `stage`: the flag when given (not None), else the preset's value, else the
    package default. `record` (preset name, source, values and where each came from) goes into the stage's JSON."""
    options = STAGE_OPTIONS[stage]
    extra = set(given) - set(options)
    if extra:
        raise TypeError(f"{stage} has no preset-governed option {sorted(extra)}")
    chosen = get_preset(preset) if preset is not None else None
    values, origin = {}, {}
    for option, (attr, default) in options.items():
        if given.get(option) is not None:
            values[option], origin[option] = given[option], "flag"
        elif chosen is not None and origin.get(TIED.get(option, option), "preset") == "preset":
            values[option], origin[option] = getattr(chosen, attr), "preset"
        else:
            values[option], origin[option] = default, "default"
    record = {"name": chosen.name if chosen else None, "source": f"{SOURCE}; script {chosen.script}" if chosen
              else None, "values": values, "origin": origin}
    return values, record


def memory_gb(preset: Preset) -> dict[str, float]:
    """ESTIMATE (not a measurement) of weight + gradient + optimizer memory, activations and logits excluded.

    Full fine-tuning as the preset runs it (the reference's pure bf16): bf16 weights 2 B/param, bf16 gradients
    2 B/param, torch AdamW m and v in the parameters' dtype 2 x 2 B/param, plus the frozen teacher copy 2 B/param
    = 10 B/param. Mixed precision (`train --full-ft` without a preset on GPU: fp32 weights, bf16 autocast) is
    4 + 4 + 8 + a float32 teacher copy 4 = 20 B/param. LoRA (one weight copy, the teacher is the same model with
    adapters off): 2 B/param (bf16 base) plus the small adapters.
    """
    n = preset.params_b * 1e9
    return {"full_ft": round(n * 10 / 1e9, 1), "full_ft_mixed": round(n * 20 / 1e9, 1), "lora": round(n * 2 / 1e9, 1)}


def table() -> list[dict]:
    """Every preset as plain data (the `presets` command and the table in docs/real-models.md)."""
    return [{**asdict(p), "memory_gb_estimate": memory_gb(p)} for p in PRESETS.values()]


__all__ = ["PRESETS", "Preset", "STAGE_OPTIONS", "get_preset", "memory_gb", "resolve", "table"]
