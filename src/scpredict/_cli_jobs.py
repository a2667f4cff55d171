"""Job commands of the CLI (train / predict / evaluate) — filled in by the scale issue."""

from __future__ import annotations

import argparse


def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """Register the job sub-commands (none yet besides ``demo``)."""
    return None
