"""The `hf-clusterable` command line: argument parsing only, one module per command, each calling the public API.

Every command module has `register(subparsers)`, which adds its parser and sets `func` to its `run(args)`.
"""
