"""What the commands that use a trained model share: a parser that already has --checkpoint and --device."""
from __future__ import annotations

import argparse


def model_command_parser(module: str, doc: str | None, checkpoint_help: str) -> argparse.ArgumentParser:
    """``python -m <module>``'s parser, the module docstring as its description (kept as written)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    return parser
