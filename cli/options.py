"""Typer options that several stage commands share: one declaration, one help text.

Use them as a parameter's type, e.g. `dtype: DtypeOption = None`; a command whose option means something else
declares its own.
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

__all__ = ["DeviceOption", "DtypeOption", "ModelOption", "PresetOption"]
