"""Which dtype the trained weights get, and a warning when that dtype cannot hold the optimizer's steps.

AdamW moves each weight by about lr per step; a bf16 weight rounds to |w| * 2**-8, so small steps vanish. The
cure is mixed precision: float32 master weights with bf16 autocast doing the math on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def weight_dtype(dtype: str | None, *, full_ft: bool, from_preset: bool, gpu: bool) -> str | None:
    """The --dtype to load the model with (None: the loader's default, float32 on CPU).

    A preset's dtype is the reference's pure bf16, a GPU setting: on CPU keep float32. Full fine-tuning on GPU
    defaults to float32 master weights (LoRA trains fp32 adapters on a frozen bf16 base, so it needs none).
    """
    if from_preset and not gpu:
        dtype = None
    if dtype is None and full_ft and gpu:
        dtype = "float32"
    return dtype


def precision_report(params: Iterable[torch.Tensor], lr: float) -> dict:
    """dtype of the trained weights, and a warning when they are bf16/fp16 *and* AdamW steps (about lr per weight)
    are below the weights' rounding step: |w| * 2**-8 for bf16, so at lr 1e-5 any weight above ~2.6e-3 never moves.
    Mixed precision (fp32 weights, bf16 autocast) is the cure; pure bf16 is what the reference ran."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    low = [d for d in dtypes if d in ("bfloat16", "float16")]
    warning = None
    if low:
        mantissa = 8 if "bfloat16" in low else 11
        warning = (f"training {'/'.join(low)} weights directly: an AdamW step of ~lr={lr:g} is rounded away on every "
                   f"weight larger than {lr * 2 ** mantissa:.2g} in magnitude; load the model with --dtype float32 "
                   "(bf16 autocast still runs the math in bf16 on GPU) unless you mean to reproduce pure-bf16 training")
    return {"trained_dtypes": dtypes, "warning": warning}


__all__ = ["precision_report", "weight_dtype"]
