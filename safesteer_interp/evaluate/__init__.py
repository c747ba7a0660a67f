"""Evaluation of any policy (base, steered teacher, student): refusal by judges, over-refusal, capability by
multiple choice, and harmless KL drift, on held-out prompts only.
"""
