"""Loading a chat model and its tokenizer, the same way for the organism and for real models.

`load_model("organism")` opens the embedded model organism shipped inside the package; a named real model
(`smollm2-135m-instruct`, `qwen2.5-coder-0.5b-instruct`) or a `.gguf` path is converted once into a cached folder
(`gguf_models`); any other spec is a local folder or a hub name read from the local cache (nothing here can
download). The tokenizer always comes back left-padded with a pad token and a chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from safesteer_interp.core.anatomy import decoder_layers
from safesteer_interp.core.gguf_models import NAMED_MODELS, gguf_folder, is_gguf_spec
from safesteer_interp.errors import SafeSteerError

# transformers 5.25 kernelizes every from_pretrained model with kernels fetched from the Hub (on CUDA:
# 'kernels-community/rotary'). Offline, where our runs live, that raises at the first `model.train()`; online it
# would swap layers for kernels whose numerics our CPU parity tests never saw. Off unless USE_HUB_KERNELS=YES is set.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

ORGANISM = "organism"
ORGANISM_DIR = Path(__file__).resolve().parent.parent / "organism" / "checkpoint"

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something `from_pretrained` can read, or raise a one-line error."""
    if spec == ORGANISM:
        if not (ORGANISM_DIR / "config.json").is_file():
            raise SafeSteerError(f"the embedded organism checkpoint is missing at {ORGANISM_DIR}; rebuild it with "
                                 "`safesteer-interp organism train --install`")
        return str(ORGANISM_DIR)
    if is_gguf_spec(spec):
        return str(gguf_folder(spec))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise SafeSteerError(f"model path '{spec}' has no config.json; point at a folder written by "
                                 "`save_pretrained`")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.endswith(os.sep) or spec.count("/") > 1:
        raise SafeSteerError(f"model path '{spec}' does not exist; pass an existing folder, a hub name, 'organism' "
                             f"or a named model ({', '.join(NAMED_MODELS)})")
    return spec  # a hub name, resolved from the local HF cache


def is_organism(spec: str) -> bool:
    """The embedded organism, or a checkpoint rebuilt by `safesteer-interp organism train` (it leaves training.json)."""
    return spec == ORGANISM or (Path(spec).expanduser() / "training.json").is_file()


def parse_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """float32 on CPU by default, bfloat16 on accelerators; strings like 'bf16' are accepted."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise SafeSteerError(f"unknown dtype '{dtype}'; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def load_tokenizer(spec: str = ORGANISM):
    """The tokenizer of `spec`, left-padded, with a pad token and a chat template (or a one-line error)."""
    path = resolve_model_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise SafeSteerError(f"could not load the tokenizer of '{spec}' (offline and not cached?): "
                             f"{str(err).splitlines()[0]}") from err
    return prepare_tokenizer(_faithful(tokenizer, path), spec)


def _faithful(tokenizer, path: str):
    """Guard against a transformers 5 pitfall: AutoTokenizer picks the class from the config's model type (e.g.
    Qwen2Tokenizer for any qwen2 folder) and rebuilds its pre-tokenizer, so a custom `tokenizer.json` (like the
    organism's word-level one) silently encodes differently. Compare with the file and fall back to it."""
    tokenizer_file = Path(path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        return tokenizer
    probe = "<|im_start|>user\nhow do I make bread ? 12 + 7<|im_end|>\n"
    if tokenizer.chat_template:
        probe = tokenizer.apply_chat_template([{"role": "user", "content": "how do I make bread ?"}],
                                              tokenize=False, add_generation_prompt=True)
    expected = Tokenizer.from_file(str(tokenizer_file)).encode(probe, add_special_tokens=False).ids
    if tokenizer(probe, add_special_tokens=False)["input_ids"] == expected:
        return tokenizer
    return PreTrainedTokenizerFast.from_pretrained(path)


def prepare_tokenizer(tokenizer, spec: str = "<tokenizer>"):
    """Make a tokenizer safe for batched chat: explicit left padding (it is not persisted), a pad token."""
    if not getattr(tokenizer, "chat_template", None):
        raise SafeSteerError(f"the tokenizer of '{spec}' has no chat template; use an instruction-tuned model or "
                             "set tokenizer.chat_template before loading")
    tokenizer.padding_side = "left"  # generation and last-token gathers assume it
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # answer masks are built from EOS positions, so pad == eos is safe
    return tokenizer


def load_model(spec: str = ORGANISM, *, dtype: str | torch.dtype | None = None, device: str = "cpu",
               require_chat_template: bool = True) -> tuple[PreTrainedModel, object]:
    """Load `(model, tokenizer)` from 'organism', a local folder or a hub name.

    `device="auto"` shards with `device_map="auto"` (accelerate); otherwise the model is moved to `device`.
    The model is returned in eval mode; training code switches modes itself.
    """
    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise SafeSteerError(f"could not load model '{spec}' (offline and not cached?): {str(err).splitlines()[0]}. "
                             "Pass a local folder instead") from err
    check_architecture(config, spec)
    torch_dtype = parse_dtype(dtype, "cuda" if device == "auto" else device)
    kwargs = {"dtype": torch_dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device != "auto":
        model.to(device)
    model.eval()
    decoder_layers(model)  # fails early, with a clear message, for models we cannot hook
    if require_chat_template:
        tokenizer = load_tokenizer(spec)
    else:
        tokenizer = _faithful(AutoTokenizer.from_pretrained(path), path)
        tokenizer.padding_side = "left"
    return model, tokenizer


def check_architecture(config, spec: str) -> None:
    """Only decoder-only causal LMs have the residual stream our hooks expect."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        arch = ", ".join(getattr(config, "architectures", None) or [str(model_type)])
        raise SafeSteerError(f"unsupported architecture '{arch}' for '{spec}': need a decoder-only causal LM "
                             "(e.g. Qwen2/Qwen3, Llama, Mistral, Gemma, Phi-3)")
