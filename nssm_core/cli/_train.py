"""``nssm train``: placeholder replaced by the training command."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``nssm train``."""
    parser = subparsers.add_parser("train", help="Train a DeepSSM on input/output data.")
    parser.set_defaults(handler=lambda args: 0)
