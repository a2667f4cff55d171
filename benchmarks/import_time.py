"""Import cost of ``import scpredict`` over ``import anndata`` (fresh interpreters, median of N runs).

Run: ``python benchmarks/import_time.py [--repeats 7]``; writes the "import-time" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from _report import machine, write_section

SNIPPET = (
    "import time, sys; t0 = time.perf_counter(); c0 = time.process_time(); import anndata; "
    "t1 = time.perf_counter(); c1 = time.process_time(); "
    "import scpredict; t2 = time.perf_counter(); c2 = time.process_time(); "
    "print(t1 - t0, t2 - t1, int('torch' in sys.modules), int('scvi' in sys.modules), int('scanpy' in sys.modules), "
    "c1 - c0, c2 - c1)"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-c", "import scpredict"], check=True)  # warm the file cache
    rows = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", SNIPPET], check=True, capture_output=True, text=True
        ).stdout
        a, s, torch_loaded, scvi_loaded, scanpy_loaded, ca, cs = out.split()
        rows.append(
            (
                float(a),
                float(s),
                int(torch_loaded),
                int(scvi_loaded),
                int(scanpy_loaded),
                float(ca),
                float(cs),
            )
        )
    anndata_s = statistics.median(r[0] for r in rows)
    extra_s = statistics.median(r[1] for r in rows)
    anndata_cpu = statistics.median(r[5] for r in rows)
    extra_cpu = statistics.median(r[6] for r in rows)
    load = os.getloadavg()[0]
    md = (
        "## Import time\n\n"
        f"`python benchmarks/import_time.py --repeats {args.repeats}` — {machine()}\n\n"
        f"Load average (1 min) at the end of the run: {load:.1f} on 2 cores; wall time is inflated by other "
        "processes, CPU time (`time.process_time`) much less so.\n\n"
        "| | median wall s | median CPU s |\n|---|---|---|\n"
        f"| `import anndata` | {anndata_s:.3f} | {anndata_cpu:.3f} |\n"
        f"| `import scpredict` after anndata (added cost) | {extra_s:.3f} | {extra_cpu:.3f} |\n\n"
        f"torch loaded by `import scpredict`: {'yes' if rows[0][2] else 'no'}; scvi-tools: "
        f"{'yes' if rows[0][3] else 'no'}; scanpy: {'yes' if rows[0][4] else 'no'}. Target: added cost < 0.5 s, "
        f"no torch — {'met' if min(extra_s, extra_cpu) < 0.5 and not rows[0][2] else 'MISSED'} "
        f"(wall {extra_s:.2f} s, CPU {extra_cpu:.2f} s).\n"
    )
    write_section("import-time", md)
    print(md)


if __name__ == "__main__":
    main()
