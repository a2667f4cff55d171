"""The ``scpredict`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    report = run_demo(Path(args.out), steps=args.steps, quick=not args.full)
    failed = [s for s, r in report["steps"].items() if r.get("status") != "ok"]
    print(
        f"report written to {Path(args.out).resolve()} ({len(report['steps'])} steps, {len(failed)} failed)"
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scpredict`` command line."""
    parser = argparse.ArgumentParser(prog="scpredict", description="scpredict: models of single-cell state.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every model on bundled/synthetic data and write a report folder")
    demo.add_argument("--out", default="demo_report", help="report folder (default: demo_report)")
    demo.add_argument("--steps", nargs="*", default=None, help="only these steps (by name)")
    demo.add_argument("--full", action="store_true", help="longer training (default: quick)")
    demo.set_defaults(func=_demo)
    from ._cli_jobs import add_job_commands

    add_job_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
