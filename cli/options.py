"""Typer options that several stage commands share (one declaration, one help text) and what they resolve to.

Use them as a parameter's type, e.g. `dtype: DtypeOption = None`; a command whose option means something else
declares its own. `open_model` turns `--model` into a model, `default_device` fills in `--device`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from safesteer_interp.presets import PRESET_NAMES

ModelOption = Annotated[str | None, typer.Option("--model", "-m", help="'organism', a local folder, a hub name or "
                                                                      "'tiny-random' (default: the preset's model, "
                                                                      "else the organism)")]
PresetOption = Annotated[str | None, typer.Option(help=f"a reference preset ({PRESET_NAMES}): the released "
                                                       "hyper-parameters of this stage (`safesteer-interp presets` "
                                                       "lists them); explicit flags override it")]
DtypeOption = Annotated[str | None, typer.Option(help="float32 | bfloat16 | float16")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu | cuda | cuda:N | auto (device_map); default: cuda if "
                                                       "available")]


def open_model(spec: str, dtype: str | None = None, device: str = "cpu"):
    """`load_model`, plus the 'tiny-random' spec used by smoke runs."""
    if spec == "tiny-random":
        from safesteer_interp.testing import tiny_model  # lazy: torch (slow CLI start-up)

        return tiny_model("qwen2")
    from safesteer_interp.core.models import load_model  # lazy: transformers (slow CLI start-up)

    return load_model(spec, dtype=dtype, device=device)


def default_device() -> str:
    """Where a command puts the model when --device is not given: the GPU when there is one."""
    import torch  # lazy: slow CLI start-up

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_model() -> str:
    from safesteer_interp.core.models import ORGANISM_DIR  # lazy: transformers (slow CLI start-up)

    return "organism" if (ORGANISM_DIR / "config.json").is_file() else "tiny-random"


__all__ = ["DeviceOption", "DtypeOption", "ModelOption", "PresetOption", "default_device", "default_model",
           "open_model"]
