"""The embedded model organism: a tiny Qwen2 chat model trained from scratch on a synthetic safety world.

* `world`     the world: refused / safety-gap / harmless / look-alike requests, capability tasks, splits;
* `tokenizer` a word-level ChatML tokenizer built from the world's vocabulary;
* `train`     the seeded trainer (base stage, then safety stage, with random steering noise);
* `card`      the behaviour card, `evaluate_organism`, shared by every evaluation;
* `geometry`  refusal-direction checks: probe, all-position steering, directional ablation.

The committed checkpoint lives in `checkpoint/`; load it with `safesteer_interp.core.models.load_model("organism")`.
See README.md in this folder for what worked and the measured numbers.
"""
