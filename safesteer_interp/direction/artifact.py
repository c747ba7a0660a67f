"""The selected refusal direction as a run-folder artifact: `RUN/direction/direction.safetensors` + `metadata.json`.

The vector is the raw (unnormalised) difference in means at the selected (pos, layer), exactly what the reference
adds with coeff 1.0. Every later stage (teacher, tokens, distillation, analyses) reads it through `load_direction`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from safesteer_interp.core.artifacts import read_json, read_tensors, write_tensors
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


@dataclass(frozen=True)
class Direction:
    """A steering direction and where it acts."""

    vector: Float[Tensor, " d_model"]  # raw mean difference (its norm is the harmful-harmless gap at `layer`)
    layer: int  # added to blocks.{layer}.hook_resid_pre
    pos: int  # the post-instruction position it was read at (negative index from the prompt end)
    coeff: float = 1.0  # the coefficient chosen for the teacher (the reference's is 1.0)
    positions: str = "all"  # where the teacher adds it: "all" tokens (the reference), "prompt" tokens or "last"

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        return self.vector / self.vector.norm()


def direction_dir(run: str | Path) -> Path:
    return Path(run) / "direction"


def save_direction(run: str | Path, direction: Direction) -> Path:
    """Write `direction.safetensors` (vector + where it acts, in the file's metadata)."""
    meta = {"layer": str(direction.layer), "pos": str(direction.pos), "coeff": repr(direction.coeff),
            "positions": direction.positions, "axes": "d_model", "hook": f"blocks.{direction.layer}.hook_resid_pre"}
    return write_tensors(direction_dir(run) / "direction.safetensors", {"direction": direction.vector.float()}, meta)


def load_direction(run: str | Path) -> Direction:
    """Read the direction selected for a run, with a clear error if stage 1 has not run."""
    path = direction_dir(run) / "direction.safetensors"
    if not path.is_file():
        raise SafeSteerError(f"no refusal direction at {path}; run `safesteer-interp direction --out {run}` first")
    vector = read_tensors(path, "refusal direction")["direction"]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    try:
        layer, pos, coeff = int(meta["layer"]), int(meta["pos"]), float(meta.get("coeff", "1.0"))
    except (KeyError, ValueError) as err:
        raise SafeSteerError(f"{path} lacks layer/pos metadata ({err}); rerun the direction stage") from err
    positions = meta.get("positions", "all")
    metadata = direction_dir(run) / "metadata.json"
    if metadata.is_file():  # a coefficient or positions chosen later (e.g. --coeff auto) are in metadata.json
        recorded = read_json(metadata, "direction metadata")
        coeff, positions = float(recorded.get("coeff", coeff)), recorded.get("positions", positions)
    if positions not in TEACHER_POSITIONS:
        raise SafeSteerError(f"{path}: steering positions {positions!r} must be one of "
                             f"{', '.join(TEACHER_POSITIONS)}; rerun the direction stage")
    return Direction(vector, layer, pos, coeff, positions)


def describe(direction: Direction) -> str:
    return json.dumps({"layer": direction.layer, "pos": direction.pos, "coeff": direction.coeff,
                       "positions": direction.positions,
                       "norm": round(float(direction.vector.norm()), 4)})


__all__ = ["TEACHER_POSITIONS", "Direction", "check_positions", "describe", "direction_dir", "load_direction",
           "save_direction"]
