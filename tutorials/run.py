"""Execute the tutorials with nbclient and store their outputs.

Usage (from the repository root)::

    python tutorials/run.py                    # execute every notebook, store outputs in place (full size)
    python tutorials/run.py quickstart         # only some notebooks (names without .ipynb)
    python tutorials/run.py --fast             # CI-sized run: SCPREDICT_TUTORIAL_FAST=1, outputs not stored
    python tutorials/run.py --list             # the notebooks and the data each needs

Notebooks run with the repository root as working directory, so ``sp.settings.data_dir`` (default
``../shared/data``) finds the shared datasets; ``$SCPREDICT_DATA_DIR`` overrides it. Logs and checkpoints go to
a temporary folder. A notebook whose data are absent is skipped with a message (exit code 0), unless
``--require-data`` is given.

A full run stores, in the notebook's metadata under ``"scpredict"``, the SHA-256 of its code cells
(``source_sha256``), the mode and the wall time. ``tests/test_docs.py`` checks that the stored outputs belong to
the current code: edit a code cell without re-running the notebook and the test fails.

The notebooks read ``SCPREDICT_TUTORIAL_FAST`` (``"1"``: fewer cells and epochs) so that the CI-sized run stays
within the CI budget; the stored (rendered) outputs always come from a full run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FAST_ENV = "SCPREDICT_TUTORIAL_FAST"


def code_sha256(nb: dict) -> str:
    """SHA-256 of a notebook's code cells (sources only, in order)."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else src
        h.update(src.encode())
        h.update(b"\n\x00\n")
    return h.hexdigest()


def notebooks(names: list[str] | None = None) -> list[Path]:
    """The tutorial notebooks, in the order of their file names (optionally only ``names``)."""
    paths = sorted(HERE.glob("*.ipynb"))
    if names:
        wanted = {n.removesuffix(".ipynb") for n in names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            msg = f"unknown notebook(s) {sorted(unknown)}; known: {[p.stem for p in paths]}"
            raise SystemExit(msg)
        paths = [p for p in paths if p.stem in wanted]
    return paths


def data_dir() -> Path:
    d = Path(os.environ.get("SCPREDICT_DATA_DIR", "../shared/data"))
    return d if d.is_absolute() else (ROOT / d).resolve()


def missing_data(nb: dict) -> list[str]:
    """Files of the shared data folder that the notebook declares (metadata ``scpredict.needs_data``) but are absent."""
    needs = nb.get("metadata", {}).get("scpredict", {}).get("needs_data", [])
    return [f for f in needs if not (data_dir() / f).exists()]


def execute(path: Path, *, fast: bool, store: bool, timeout: int, kernel: str) -> tuple[str, float]:
    """Execute one notebook; returns (status, seconds). Status is "ok", "skipped: ..." or raises on error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    missing = missing_data(nb)
    if missing:
        return f"skipped: data not found in {data_dir()}: {missing}", 0.0
    env_backup = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="sp_tutorial_") as tmp:
        os.environ[FAST_ENV] = "1" if fast else "0"
        os.environ.setdefault("SCPREDICT_DATA_DIR", str(data_dir()))
        os.environ["SCPREDICT_LOG_DIR"] = str(Path(tmp) / "logs")
        os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        t0 = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            client = NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=kernel,
                resources={"metadata": {"path": str(ROOT)}},
                record_timing=False,
            )
            client.execute()
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        seconds = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once it has exited
        cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if store:
        meta = nb.metadata.setdefault("scpredict", {})
        meta.update(
            {
                "source_sha256": code_sha256(nb),
                "mode": "fast" if fast else "full",
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu_seconds, 1),
                "executed_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
    print(f"[tutorials] {path.name}: {seconds:.0f} s wall, {cpu_seconds:.0f} s CPU (kernel)", flush=True)
    return "ok", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument(
        "--fast", action="store_true", help=f"CI-sized run ({FAST_ENV}=1); outputs not stored"
    )
    parser.add_argument("--store", action="store_true", help="store outputs even in --fast mode")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    parser.add_argument("--require-data", action="store_true", help="fail instead of skipping without data")
    parser.add_argument("--list", action="store_true", help="list the notebooks and their data, then exit")
    args = parser.parse_args(argv)

    paths = notebooks(args.names)
    if args.list:
        for p in paths:
            nb = json.loads(p.read_text())
            meta = nb.get("metadata", {}).get("scpredict", {})
            print(
                f"{p.name:32s} needs {meta.get('needs_data', [])}; last {meta.get('mode')} run "
                f"{meta.get('seconds')} s wall, {meta.get('cpu_seconds')} s CPU"
            )
        return 0

    store = args.store or not args.fast
    failed: list[str] = []
    total = 0.0
    for p in paths:
        print(f"[tutorials] {p.name} ({'fast' if args.fast else 'full'}) ...", flush=True)
        try:
            status, seconds = execute(
                p, fast=args.fast, store=store, timeout=args.timeout, kernel=args.kernel
            )
        except Exception as e:  # noqa: BLE001 - report every failing notebook, then exit non-zero
            failed.append(p.name)
            print(
                f"[tutorials] {p.name} FAILED: {type(e).__name__}: {str(e)[-3000:]}",
                file=sys.stderr,
                flush=True,
            )
            continue
        if status.startswith("skipped") and args.require_data:
            failed.append(p.name)
        total += seconds
        print(f"[tutorials] {p.name}: {status} ({seconds:.0f} s)", flush=True)
    print(f"[tutorials] {len(paths) - len(failed)}/{len(paths)} ok in {total:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
