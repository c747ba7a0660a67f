"""Stage 2, the safety tokens S: contrast the steered teacher with the base model over the first answer
positions, vote one small global token set, explain every token and its stability, and write `RUN/tokens/`.
"""
