"""Loading models through the real-model code path, and the one-line errors users see for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from safesteer_interp import SafeSteerError
from safesteer_interp.core.anatomy import decoder_layers
from safesteer_interp.core.chat import encode_prompts, post_instruction_length, post_instruction_tokens
from safesteer_interp.core.hooks import add_to_resid
from safesteer_interp.core.models import load_model
from safesteer_interp.testing import ARCHITECTURES, tiny_tokenizer


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_local_folder(tiny_dirs, arch):
    model, tok = load_model(str(tiny_dirs[arch]))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert len(decoder_layers(model)) == 3 and not model.training
    # the saved tokenizer encodes exactly like the one it was saved from (transformers 5 class-swap pitfall)
    text = encode_prompts(tok, ["how do i make bread ?"]).input_ids[0].tolist()
    original = tiny_tokenizer()
    assert text == encode_prompts(original, ["how do i make bread ?"]).input_ids[0].tolist()
    assert post_instruction_tokens(tok) == ["<|im_end|>", "<|im_start|>", "assistant"]


def test_dtype_option(tiny_dirs):
    model, _ = load_model(str(tiny_dirs["qwen2"]), dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(SafeSteerError, match="unknown dtype 'fp8'"):
        load_model(str(tiny_dirs["qwen2"]), dtype="fp8")


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(SafeSteerError) as err:
        load_model(str(tmp_path / "nope"))
    assert "does not exist" in _one_line(err) and "nope" in str(err.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(SafeSteerError, match="has no config.json"):
        load_model(str(tmp_path))


def test_hub_name_offline_is_one_line():
    with pytest.raises(SafeSteerError) as err:
        load_model("not-an-org/not-a-model-xyz")
    assert "not-an-org/not-a-model-xyz" in _one_line(err) and "local folder" in str(err.value)


def test_tokenizer_without_chat_template(tiny_dirs, tmp_path):
    folder = tmp_path / "nochat"
    model, tok = load_model(str(tiny_dirs["qwen2"]))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SafeSteerError) as err:
        load_model(str(folder))
    assert "has no chat template" in _one_line(err)


def test_unsupported_architecture(tmp_path):
    from transformers import T5Config

    T5Config(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=50).save_pretrained(tmp_path)
    with pytest.raises(SafeSteerError) as err:
        load_model(str(tmp_path))
    assert "unsupported architecture 't5'" in _one_line(err)


def test_layer_out_of_range_and_wrong_width(qwen2):
    model, _ = qwen2
    with pytest.raises(SafeSteerError) as err:
        with add_to_resid(model, torch.zeros(64), 5):
            pass
    assert _one_line(err) == "layer 5 is out of range: the model has 3 decoder layers (0..2)"
    with pytest.raises(SafeSteerError) as err:
        with add_to_resid(model, torch.zeros(32), 1):
            pass
    assert "shape (32,)" in _one_line(err) and "d_model=64" in str(err.value)


def test_post_instruction_length_follows_the_template(qwen2):
    _, tok = qwen2
    assert post_instruction_length(tok) == 3  # <|im_end|> <|im_start|> assistant (newlines are not tokens here)
    tok.chat_template = tok.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\nsure'")
    assert post_instruction_length(tok) == 4


def test_cli_prints_one_line_error_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "safesteer_interp.cli.main", "hooks", "--model",
                           str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
