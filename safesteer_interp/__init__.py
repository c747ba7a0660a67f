"""safesteer-interp: SafeSteer (refusal direction -> safety tokens -> localized on-policy distillation),
built on hooked residual streams so that every stage can be inspected.

The core is a small hook layer over HF decoder layers (`safesteer_interp.core.hooks`), a loader that treats the
embedded model organism and real models alike (`safesteer_interp.core.models`), and chat batching that keeps
scoring and generation numerically identical (`safesteer_interp.core.chat`).
"""

from safesteer_interp.errors import SafeSteerError

__version__ = "0.1.0"
__all__ = ["SafeSteerError", "__version__"]
