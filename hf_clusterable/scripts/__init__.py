"""Runnable training scripts above the library and the examples: `train` runs a YAML recipe (`train_args` parses
it), as `trl/scripts/` does for TRL."""
