"""CLI subcommands, one module each, every module exposing ``register(subparsers)``.

A command's handler takes the parsed ``argparse.Namespace`` and returns an exit code; it imports
what it needs inside the handler so `renkei --help` stays fast.
"""
