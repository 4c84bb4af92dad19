"""The `ilct` argument parser: one sub-parser per command, each added by its module's `add_parser`."""

from __future__ import annotations

import argparse

from ilct.cli import analyze, autoencoder, clips, demo, encode, export, sample, schedule, train
from ilct.cli import eval as evaluate  # the module of `ilct eval` (not the builtin)

# in the order --help lists them
COMMANDS = (autoencoder, train, sample, schedule, encode, analyze, evaluate, clips, export, demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ilct", description="Improved latent consistency training (Dao et al., ICLR 2025).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, argparse.ArgumentDefaultsHelpFormatter)
    return p
