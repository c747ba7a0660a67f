"""The named variants of the distillation loss, as plain names (no torch here: the CLI builds its choices from them).

vocab: the tokens the loss sees (the safety set S, the teacher's top-K per position, or all); divergence: reverse KL
(SafeSteer), forward KL or generalised JSD; restrict: how a token set enters it (`paper`, the published unnormalised
partial sum; `renorm` and `binned`, our variants). `distill.losses` computes each of them.
"""

from __future__ import annotations

from typing import Literal, get_args

Vocab = Literal["full", "topk", "safe"]
Divergence = Literal["reverse", "forward", "jsd"]
Restrict = Literal["paper", "renorm", "binned"]
VOCABS, DIVERGENCES, RESTRICTS = get_args(Vocab), get_args(Divergence), get_args(Restrict)

__all__ = ["DIVERGENCES", "RESTRICTS", "VOCABS", "Divergence", "Restrict", "Vocab"]
