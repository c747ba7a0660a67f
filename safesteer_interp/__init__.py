"""safesteer-interp: SafeSteer (refusal direction -> safety tokens -> localized on-policy distillation),
built on hooked residual streams so that every stage can be inspected.

One subpackage per stage of the paper, in the order they run: `direction` (stage 1) -> `teacher` -> `tokens`
(stage 2) -> `distill` (stage 3) -> `evaluate` -> `report`, each writing its own folder of the run; `pipeline` is the
only orchestrator. They stand on `core` (anatomy, hooks, chat, generation, scoring, loading, artifacts), `data` and
the embedded `organism`; imports only run downwards.
"""

from safesteer_interp.errors import SafeSteerError

__version__ = "0.1.0"
__all__ = ["SafeSteerError", "__version__"]
