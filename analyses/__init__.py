"""Analyses that explain SafeSteer runs (installed as `safesteer_interp.analyses`).

Adapters to TransformerLens' `TransformerBridge` and to nnsight live here: they serve analyses and parity checks,
always on their own model instance, never on the model being trained.
"""
