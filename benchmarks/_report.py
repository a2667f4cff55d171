"""Write one benchmark's results into its own section of ``docs/benchmarks.md``."""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
MACHINE = "2-core CPU (x86_64), 24 GB RAM, no GPU"


def machine() -> str:
    """One line describing the machine and software the numbers come from."""
    import importlib

    vers = []
    for mod in ("torch", "scvi", "anndata", "scanpy"):
        try:
            vers.append(f"{mod} {importlib.import_module(mod).__version__}")
        except Exception:  # noqa: BLE001
            pass
    return f"{MACHINE}; Python {sys.version.split()[0]} on {platform.system()}; " + ", ".join(vers)


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section ``name`` of docs/benchmarks.md with ``markdown``.

    The section is delimited by HTML comments so that several scripts can share the page.
    """
    start, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    )
    DOC.write_text(text)
