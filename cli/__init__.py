"""The `safesteer-interp` command line (installed as `safesteer_interp.cli`)."""
