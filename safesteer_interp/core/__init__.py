"""The hooked core every stage stands on: model anatomy, hook points, chat batching, generation, scoring,
loading and run-folder artifacts. Nothing here knows about refusal, safety tokens or training; the stages
above import from here and never the other way round.
"""
