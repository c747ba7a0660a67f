"""Stage 3, localized on-policy distillation: the student samples answers, the teacher scores the same tokens,
and a reverse KL restricted to S is minimised (the published loss and named variants), with resumable
checkpoints and per-step metrics in `RUN/train/`.
"""
