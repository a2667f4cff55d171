"""``scpredict demo``: every model on bundled and synthetic data, written to a report folder.

Steps live in ``_step_<name>.py`` files that define ``ORDER: int`` and ``run(out_dir, report) -> None``; they
are discovered automatically and run in ``ORDER``. A failing step is recorded in the report and the others
still run.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
import traceback
from pathlib import Path

__all__ = ["run_demo", "discover_steps"]


def discover_steps() -> list[tuple[int, str, object]]:
    """(order, name, module) of every demo step, sorted by order."""
    steps = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_step_"):
            mod = importlib.import_module(f"{__name__}.{info.name}")
            steps.append((int(getattr(mod, "ORDER", 100)), info.name.removeprefix("_step_"), mod))
    return sorted(steps, key=lambda s: (s[0], s[1]))


def run_demo(out_dir: Path, *, steps: list[str] | None = None, quick: bool = True) -> dict:
    """Run the demo steps, writing ``report.json``, figures and h5ad files into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import scpredict as sp

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp.settings.log_dir = out_dir / "logs"
    report: dict = {"version": sp.__version__, "quick": quick, "steps": {}}
    t_all = time.perf_counter()
    for _, name, mod in discover_steps():
        if steps and name not in steps:
            continue
        print(f"[scpredict demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        entry: dict = {}
        report["steps"][name] = entry
        try:
            mod.run(out_dir, entry)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - the report says what failed, other steps still run
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            print(entry["traceback"], flush=True)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[scpredict demo] {name}: {entry['status']} in {entry['seconds']} s", flush=True)
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=1, default=str))
    return report
