"""Prompt sets by name or file: the organism's splits, hub datasets (offline, from the cache) and local copies,
all filtered and mapped to plain instruction lists with a seeded, order-independent sample.
"""
