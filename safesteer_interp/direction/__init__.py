"""Stage 1, the refusal direction: difference in means of harmful and harmless residual streams at every
(position, layer), scored by ablation, addition and KL, one candidate selected on validation prompts, and the
artifact (`RUN/direction/`) that the teacher reads.
"""
