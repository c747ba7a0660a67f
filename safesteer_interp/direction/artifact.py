"""The selected refusal direction as a run-folder artifact: `RUN/direction/direction.safetensors` + `metadata.json`.

The safetensors file holds the vector: the raw (unnormalised) difference in means at the selected (pos, layer),
exactly what the reference adds with coeff 1.0. metadata.json holds where and how strongly it acts, with the stage's
record. `save_direction` writes both; every later stage reads them through `load_direction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.artifacts import read_json, read_tensors, write_json, write_tensors
from safesteer_interp.errors import SafeSteerError

# Where a teacher adds the direction: every token (the reference), every prompt token but no generated one, or
# the last prompt token. Broadest first: the direction stage prefers the earlier one on a tie.
TEACHER_POSITIONS = ("all", "prompt", "last")


def check_positions(value: str | None, flag: str = "--positions", *, auto: bool = False) -> str | None:
    """`value` if it names teacher positions (None passes: "use the direction's"); `auto` also allows "auto"."""
    allowed = TEACHER_POSITIONS + (("auto",) if auto else ())
    if value is not None and value not in allowed:
        raise SafeSteerError(f"{flag} must be one of {', '.join(allowed)}, not {value!r}")
    return value


class AtLayer:
    """A vector that lives in the residual stream entering decoder layer `layer` (read or written there)."""

    vector: Float[Tensor, " d_model"]
    layer: int

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        return self.vector / self.vector.norm()

    @property
    def hook(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"


@dataclass(frozen=True)
class Direction(AtLayer):
    """A steering direction and where it acts."""

    vector: Float[Tensor, " d_model"]  # raw mean difference (its norm is the harmful-harmless gap at `layer`)
    layer: int  # added to blocks.{layer}.hook_resid_pre
    pos: int  # the post-instruction position it was read at (negative index from the prompt end)
    coeff: float = 1.0  # the coefficient chosen for the teacher (the reference's is 1.0)
    positions: str = "all"  # where the teacher adds it: "all" tokens (the reference), "prompt" tokens or "last"


def direction_dir(run: str | Path) -> Path:
    return Path(run) / "direction"


def save_direction(run: str | Path, direction: Direction, record: dict | None = None) -> dict:
    """Write the direction: the vector to `direction.safetensors`, where it acts to `metadata.json`.

    `record` (the stage's report: selection, checks, validation, a preset) goes into metadata.json with it, in its
    own key order; the direction's fields (layer, pos, coeff, positions, hook) always come from `direction`.
    Returns metadata.json's content.
    """
    folder = direction_dir(run)
    write_tensors(folder / "direction.safetensors", {"direction": direction.vector.float()},
                  {"axes": "d_model", "what": "raw difference in means (harmful - harmless) at the selected cell",
                   "where": "metadata.json beside this file: layer, pos, coeff, positions, hook"})
    where = {"layer": direction.layer, "pos": direction.pos, "coeff": direction.coeff,
             "positions": direction.positions, "hook": direction.hook}
    metadata = {**(record or {}), **where}
    write_json(folder / "metadata.json", metadata)
    return metadata


def load_direction(run: str | Path) -> Direction:
    """Read the direction selected for a run (the vector from the safetensors file, the rest from metadata.json),
    with a clear error if stage 1 has not run."""
    path, metadata = direction_dir(run) / "direction.safetensors", direction_dir(run) / "metadata.json"
    if not path.is_file() or not metadata.is_file():
        missing = path if not path.is_file() else metadata
        raise SafeSteerError(f"no refusal direction at {missing}; run `safesteer-interp direction --out {run}` first")
    vector = read_tensors(path, "refusal direction")["direction"]
    meta = read_json(metadata, "direction metadata")
    try:
        layer, pos, coeff = int(meta["layer"]), int(meta["pos"]), float(meta.get("coeff", 1.0))
    except (KeyError, TypeError, ValueError) as err:
        raise SafeSteerError(f"{metadata} lacks layer/pos ({err}); rerun the direction stage") from err
    positions = meta.get("positions", "all")
    if positions not in TEACHER_POSITIONS:
        raise SafeSteerError(f"{metadata}: steering positions {positions!r} must be one of "
                             f"{', '.join(TEACHER_POSITIONS)}; rerun the direction stage")
    return Direction(vector, layer, pos, coeff, positions)


__all__ = ["TEACHER_POSITIONS", "AtLayer", "Direction", "check_positions", "direction_dir", "load_direction",
           "save_direction"]
