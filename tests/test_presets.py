"""Presets: the reference's released numbers, explicit flags first, unchanged defaults without a preset."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from safesteer_interp import SafeSteerError
from safesteer_interp.presets import PRESETS, STAGE_OPTIONS, get_preset, memory_gb, resolve

# reference §2.4 (scripts/run_*.sh), written out by hand: model, lr, H, min_steered_prob
RELEASED = {"qwen3-4b": ("Qwen/Qwen3-4B-Instruct-2507", 1e-5, 7, 1e-8),
            "qwen2.5-7b": ("Qwen/Qwen2.5-7B-Instruct", 1e-5, 7, 1e-8),
            "llama3-8b": ("meta-llama/Meta-Llama-3-8B-Instruct", 1e-6, 5, 1e-7),
            "llama3.2-3b": ("meta-llama/Llama-3.2-3B-Instruct", 1e-6, 5, 1e-7)}


@pytest.mark.parametrize("name", list(RELEASED))
def test_each_preset_resolves_to_the_released_numbers(name):
    model, lr, horizon, min_prob = RELEASED[name]
    train, record = resolve("train", name)
    assert train == {"model": model, "prompts": "pku-saferlhf", "n_prompts": 100, "lr": lr, "full_ft": True,
                     "samples": 8, "max_new_tokens": 512, "prompts_per_step": 4, "grad_checkpointing": True,
                     "dtype": "bfloat16"}
    assert record["name"] == name and set(record["origin"].values()) == {"preset"}
    tokens, _ = resolve("tokens", name)
    assert tokens == {"model": model, "k": 50, "horizon": horizon, "samples": 8, "method": "vote", "k_inner": 200,
                      "min_prob": min_prob}
    assert resolve("direction", name)[0] == {"model": model}
    p = get_preset(name)
    assert (p.temperature, p.top_p, p.max_prompt_length, p.epochs, p.warmup_ratio, p.scheduler, p.max_grad_norm,
            p.seed, p.bf16, p.coeff, p.n_train, p.n_val) == (1.0, 1.0, 512, 1, 0.1, "cosine", 1.0, 42, True, 1.0,
                                                              128, 32)
    assert p.prompts_per_step * p.samples == 32  # num_prompts_per_batch: 32 completions per optimizer step


def test_an_explicit_flag_beats_the_preset():
    values, record = resolve("train", "llama3-8b", lr=3e-4, full_ft=False, samples=2, model="organism")
    assert values["lr"] == 3e-4 and values["full_ft"] is False and values["samples"] == 2
    assert values["model"] == "organism" and values["max_new_tokens"] == 512
    assert record["origin"]["lr"] == "flag" and record["origin"]["max_new_tokens"] == "preset"
    values, record = resolve("train", "qwen3-4b", prompts="mine.jsonl")  # my prompts: all of them, not 100
    assert (values["prompts"], values["n_prompts"], record["origin"]["n_prompts"]) == ("mine.jsonl", None, "default")
    assert resolve("train", "qwen3-4b", prompts="mine.jsonl", n_prompts=7)[0]["n_prompts"] == 7
    values, _ = resolve("tokens", "qwen3-4b", k="auto", horizon=1, min_prob=0.0)
    assert (values["k"], values["horizon"], values["min_prob"], values["k_inner"]) == ("auto", 1, 0.0, 200)


def test_no_preset_keeps_the_package_defaults():
    from safesteer_interp.distill.config import DistillConfig
    from safesteer_interp.tokens.contrast import ContrastConfig
    from safesteer_interp.tokens.vote import VoteConfig

    train, record = resolve("train", None)
    cfg = DistillConfig()
    assert train == {"model": "organism", "prompts": None, "n_prompts": None, "lr": cfg.lr, "full_ft": cfg.full_ft,
                     "samples": cfg.samples, "max_new_tokens": cfg.max_new_tokens,
                     "prompts_per_step": cfg.prompts_per_step, "grad_checkpointing": cfg.grad_checkpointing,
                     "dtype": None}
    assert record["name"] is None and set(record["origin"].values()) == {"default"}
    tokens, _ = resolve("tokens", None)
    contrast, selection = ContrastConfig(), VoteConfig()
    assert tokens == {"model": None, "k": str(selection.k), "horizon": contrast.horizon, "samples": contrast.samples,
                      "method": selection.method, "k_inner": selection.k_inner, "min_prob": selection.min_prob}
    assert resolve("direction", None)[0] == {"model": "organism"}


def test_cli_defaults_are_none_so_the_preset_can_tell_flags_apart():
    """Every preset-governed option of a command defaults to None (the resolver supplies the package default)."""
    import inspect

    from safesteer_interp.cli.direction import direction
    from safesteer_interp.cli.tokens import tokens
    from safesteer_interp.cli.train import train

    for stage, command in (("train", train), ("tokens", tokens), ("direction", direction)):
        params = inspect.signature(command).parameters
        assert params["preset"].default is None
        for option in STAGE_OPTIONS[stage]:
            assert params[option].default is None, (stage, option)


def test_unknown_preset_is_one_line_listing_the_valid_ones():
    with pytest.raises(SafeSteerError) as info:
        resolve("train", "llama4")
    message = str(info.value)
    assert "\n" not in message and "unknown preset 'llama4'" in message
    assert all(name in message for name in PRESETS)


def test_memory_estimate_per_parameter():
    # 8.03 B params: pure bf16 full FT 10 B/param, mixed precision 20 B/param, LoRA 2 B/param
    assert memory_gb(get_preset("llama3-8b")) == {"full_ft": 80.3, "full_ft_mixed": 160.6, "lora": 16.1}


# ----------------------------------------------------------------------------------------------- CLI
def _app(command, name):
    app = typer.Typer()
    app.command(name)(command)
    app.command("noop")(lambda: None)  # two commands keep `name` a subcommand, as in the real app
    return app


def test_train_cli_unknown_preset_fails_before_loading_anything(tmp_path):
    from safesteer_interp.cli.train import train

    result = CliRunner().invoke(_app(train, "train"), ["train", "--run", str(tmp_path), "--preset", "gpt-5"])
    assert isinstance(result.exception, SafeSteerError) and "valid presets: qwen3-4b" in str(result.exception)


def test_train_cli_preset_reaches_the_config(tmp_path, one_thread):
    """--preset llama3-8b on a tiny model: preset values land in config.json, explicit flags win. (`--threads 1` sets
    the process's count, as a CLI should; `one_thread` puts the session's back afterwards.)"""
    from safesteer_interp.cli.train import train
    from safesteer_interp.direction.artifact import Direction, save_direction

    save_direction(tmp_path, Direction(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 3, 1, -1))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"how do i hack thing {i} ?"}) + "\n" for i in range(4)))
    args = ["train", "--run", str(tmp_path), "--preset", "llama3-8b", "--model", "tiny-random", "--prompts",
            str(prompts), "--samples", "2", "--max-new-tokens", "3", "--max-steps", "1", "--vocab", "full",
            "--threads", "1"]
    result = CliRunner().invoke(_app(train, "train"), args)
    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads((tmp_path / "train" / "config.json").read_text())
    assert config["learning_rate"] == 1e-6
    assert config["config"]["full_ft"] is True and config["config"]["prompts_per_step"] == 4
    assert config["config"]["grad_checkpointing"] is True
    assert (config["config"]["samples"], config["config"]["max_new_tokens"]) == (2, 3)
    preset = config["preset"]
    assert preset["name"] == "llama3-8b" and "run_llama3_8b.sh" in preset["source"]
    assert preset["origin"]["samples"] == "flag" and preset["origin"]["lr"] == "preset"
    assert preset["values"]["model"] == "tiny-random"


def test_tokens_cli_preset_reaches_tokens_json(tmp_path, monkeypatch):
    from conftest import PROMPTS

    from safesteer_interp.cli.tokens import tokens
    from safesteer_interp.core.artifacts import write_json
    from safesteer_interp.direction.artifact import Direction, save_direction
    from safesteer_interp.testing import tiny_model

    monkeypatch.setattr("safesteer_interp.cli.options.open_model", lambda spec, *args, **kw: tiny_model("qwen2"))
    save_direction(tmp_path, Direction(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 2, 1, -1))
    write_json(tmp_path / "direction" / "prompts.json", {"harmless_val": PROMPTS, "harmful_val": PROMPTS[:2]})
    result = CliRunner().invoke(_app(tokens, "tokens"), ["tokens", "--run", str(tmp_path), "--preset", "qwen3-4b",
                                                         "--model", "tiny-random", "--horizon", "2", "--samples", "2",
                                                         "--no-stability"])
    assert result.exit_code == 0, (result.output, result.exception)
    config = json.loads((tmp_path / "tokens" / "tokens.json").read_text())["config"]
    assert (config["horizon"], config["samples"], config["min_prob"], config["k_inner"], config["k"]) == \
        (2, 2, 1e-8, 200, 50)
    assert config["preset"]["name"] == "qwen3-4b" and config["preset"]["origin"]["horizon"] == "flag"
