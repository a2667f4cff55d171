"""Loader benchmark: cells/s and peak RSS for in-memory vs chunk directory vs backed h5ad, prefetch on/off.

A synthetic sparse cells × genes matrix is written to a temporary folder as an ``.h5ad`` and as a chunk
directory (:func:`scpredict.data.write_chunks`). Each configuration runs one full epoch of shuffled minibatches
(dense float32 tensors, as a model sees them) in its own subprocess, so that peak RSS (the process plus its
loader workers) is measured per configuration. With ``--compute`` each batch also goes through a small
matmul to stand in for a model step, which is what background prefetching can overlap with.

Timed rows stop after ``--max-seconds`` (cells/s is then over the part of the epoch read; the load average of
the machine is recorded next to each row). Run timing benchmarks under ``flock /tmp/scp_timing.lock``.

Run: ``flock /tmp/scp_timing.lock python benchmarks/loaders.py [--n-obs 500000] [--n-vars 2000] [--density 0.05]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [
    ("in-memory (AnnData, CSR)", "memory", 0),
    ("chunk dir, prefetch off", "chunks", 0),
    ("chunk dir, prefetch on (1 worker, prefetch_factor 2)", "chunks", 1),
    ("backed h5ad, row chunks, prefetch off", "h5ad", 0),
    ("backed h5ad, row chunks, prefetch on (1 worker)", "h5ad", 1),
    ("backed h5ad, random minibatch reads", "backed_random", 0),
]


def make_data(folder: Path, n_obs: int, n_vars: int, density: float, chunk_size: int) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp_sparse

    import scpredict as sp

    rng = np.random.default_rng(0)
    nnz_row = max(1, int(n_vars * density))
    parts = []
    for start in range(0, n_obs, 50_000):  # build in blocks to bound memory
        n = min(50_000, n_obs - start)
        cols = rng.integers(0, n_vars, size=(n, nnz_row)).astype(np.int32)
        cols.sort(axis=1)
        vals = rng.gamma(1.0, 1.0, size=(n, nnz_row)).astype(np.float32)
        m = sp_sparse.csr_matrix(
            (vals.ravel(), cols.ravel(), np.arange(0, n * nnz_row + 1, nnz_row)), shape=(n, n_vars)
        )
        m.sum_duplicates()
        parts.append(m)
    x = sp_sparse.vstack(parts, format="csr")
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(rng.choice([f"t{i}" for i in range(10)], n_obs))},
        index=[f"c{i}" for i in range(n_obs)],
    )
    adata = ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]))
    adata.write_h5ad(folder / "data.h5ad")
    sp.data.write_chunks(adata, folder / "chunks", chunk_size=chunk_size)


def _vm_hwm_mb() -> float:
    """Peak resident set of this process image (``VmHWM``; unlike ``ru_maxrss`` it is not inherited from
    the parent across fork + exec, which made every row report the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children() -> set[int]:
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids |= {int(p) for p in (task / "children").read_text().split()}
        except OSError:
            continue
    return pids


class _ChildPeak:
    """Sample the resident set of child processes started after construction (loader workers), 5× a second."""

    def __init__(self) -> None:
        import threading

        self.before = _children()
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in _children() - self.before:
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, float(line.split()[1]) / 1024)
                except OSError:
                    continue

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_config(
    folder: Path,
    kind: str,
    workers: int,
    batch_size: int,
    chunk_size: int,
    compute: bool,
    max_seconds: float,
) -> dict:
    import torch

    import scpredict as sp

    torch.manual_seed(0)
    children = _ChildPeak()
    w = torch.randn(0, 0)
    t0 = time.perf_counter()
    n = 0
    n_batches = 0
    deadline = [np.inf]
    load_s = 0.0  # reading the whole matrix into memory first (in-memory row only)

    def over() -> bool:
        return time.perf_counter() > deadline[0]

    def step(x: torch.Tensor) -> None:
        nonlocal w
        if compute:
            if w.shape[0] != x.shape[1]:
                w = torch.randn(x.shape[1], 512)
            torch.relu(x @ w).sum()

    if kind == "memory":
        import anndata as ad

        adata = ad.read_h5ad(folder / "data.h5ad")
        x = adata.X.tocsr()
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        deadline[0] = t0 + max_seconds
        perm = np.random.default_rng(0).permutation(x.shape[0])
        for s in range(0, len(perm), batch_size):
            idx = np.sort(perm[s : s + batch_size])
            xb = torch.from_numpy(x[idx].toarray())
            step(xb)
            n += xb.shape[0]
            n_batches += 1
            if over():
                break
    elif kind in ("chunks", "h5ad"):
        src = folder / ("chunks" if kind == "chunks" else "data.h5ad")
        ds = sp.data.ChunkedDataset(
            src,
            batch_size=batch_size,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            chunk_size=chunk_size,
        )
        deadline[0] = t0 + max_seconds
        for batch in ds:
            step(batch.X)
            n += batch.X.shape[0]
            n_batches += 1
            if over():
                break
    elif kind == "backed_random":
        import anndata as ad

        adata = ad.read_h5ad(folder / "data.h5ad", backed="r")
        perm = np.random.default_rng(0).permutation(adata.n_obs)
        deadline[0] = time.perf_counter() + min(60.0, max_seconds)  # random access is slow: bounded
        for s in range(0, len(perm), batch_size):
            idx = np.sort(perm[s : s + batch_size])
            xb = torch.from_numpy(adata.X[idx].toarray())
            step(xb)
            n += xb.shape[0]
            n_batches += 1
            if over():
                break
    seconds = time.perf_counter() - t0
    rss_self = _vm_hwm_mb()
    rss_children = children.stop()
    return {
        "load_avg_1min": os.getloadavg()[0],
        "read_all_s": load_s,
        "cells": n,
        "batches": n_batches,
        "seconds": seconds,
        "cells_per_s": n / seconds,
        "peak_rss_mb": rss_self,
        "peak_rss_worker_mb": rss_children,
    }


def reading(df) -> str:
    """A short reading of the table, computed from it."""

    def get(label: str, step: str, col: str) -> float:
        sel = df[(df["loader"] == label) & (df["model step"] == step)]
        return float(sel[col].iloc[0]) if len(sel) else float("nan")

    mem, chunk_off = "in-memory (AnnData, CSR)", "chunk dir, prefetch off"
    chunk_on = "chunk dir, prefetch on (1 worker, prefetch_factor 2)"
    h5_off, rand = "backed h5ad, row chunks, prefetch off", "backed h5ad, random minibatch reads"
    return (
        f"Reading (loader alone): the chunk directory streams {get(chunk_off, 'none', 'cells_per_s'):,.0f} "
        f"cells/s ({get(chunk_on, 'none', 'cells_per_s'):,.0f} with one prefetch worker) with a peak RSS of "
        f"{get(chunk_off, 'none', 'peak_rss_mb'):,.0f} MB against "
        f"{get(mem, 'none', 'cells_per_s'):,.0f} cells/s and {get(mem, 'none', 'peak_rss_mb'):,.0f} MB in memory "
        "(the in-memory RSS grows with the data, the chunked one with the chunk size); row-range chunks of the "
        f"backed h5ad give {get(h5_off, 'none', 'cells_per_s'):,.0f} cells/s, random minibatch reads of the same "
        f"file only {get(rand, 'none', 'cells_per_s'):,.0f}. With a model step every loader but random reads "
        "keeps up with the step; the differences between those rows (and prefetch on vs off) are within the "
        "noise of the shared machine (other engineers' jobs and two of this session's training processes ran "
        "at the same time, load average in the table), so prefetching's benefit — overlapping disk reads "
        "with accelerator compute — cannot be measured on this 2-core CPU. Worker RSS counts pages shared "
        "with the main process at fork."
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-obs", type=int, default=200_000)
    ap.add_argument("--n-vars", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--folder", type=str, default=None)
    ap.add_argument("--config", type=str, default=None, help="internal: run one configuration")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--compute", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop a timed row after this long")
    ap.add_argument("--no-compute-rows", action="store_true", help="skip the rows with a model step")
    args = ap.parse_args()

    if args.config is not None:
        out = run_config(
            Path(args.folder),
            args.config,
            args.workers,
            args.batch_size,
            args.chunk_size,
            args.compute,
            args.max_seconds,
        )
        print("RESULT " + json.dumps(out))
        return

    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_data(folder, args.n_obs, args.n_vars, args.density, args.chunk_size)
        t_write = time.perf_counter() - t0
        size_h5ad = (folder / "data.h5ad").stat().st_size / 2**20
        size_chunks = sum(p.stat().st_size for p in (folder / "chunks").iterdir()) / 2**20
        print(
            f"wrote data in {t_write:.0f}s (h5ad {size_h5ad:.0f} MB, chunks {size_chunks:.0f} MB)", flush=True
        )
        rows = []
        load_start = os.getloadavg()
        for compute in (False,) if args.no_compute_rows else (False, True):
            for label, kind, workers in CONFIGS:
                cmd = [
                    sys.executable,
                    __file__,
                    "--config",
                    kind,
                    "--folder",
                    str(folder),
                    "--workers",
                    str(workers),
                    "--batch-size",
                    str(args.batch_size),
                    "--chunk-size",
                    str(args.chunk_size),
                    "--max-seconds",
                    str(args.max_seconds),
                ] + (["--compute"] if compute else [])
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(res.stdout, res.stderr, flush=True)
                    continue
                out = json.loads(line[len("RESULT ") :])
                out.update({"loader": label, "model step": "matmul 2000×512" if compute else "none"})
                rows.append(out)
                print(json.dumps(out), flush=True)
    df = pd.DataFrame(rows)
    table = df[
        [
            "loader",
            "model step",
            "cells_per_s",
            "peak_rss_mb",
            "peak_rss_worker_mb",
            "cells",
            "seconds",
            "load_avg_1min",
        ]
    ].rename(
        columns={
            "cells_per_s": "cells/s",
            "peak_rss_mb": "peak RSS main (MB)",
            "peak_rss_worker_mb": "peak RSS worker (MB)",
            "cells": "cells read",
            "seconds": "s",
            "load_avg_1min": "load avg (1 min)",
        }
    )
    load_end = os.getloadavg()
    print(table.to_string(index=False))
    if args.no_write:
        return
    from _report import machine, write_section

    nnz = int(args.n_obs * args.n_vars * args.density)
    md = [
        "## Loaders — in-memory vs chunk directory vs backed h5ad (seed 003 two-level loader)",
        "",
        f"Command: `flock /tmp/scp_timing.lock python benchmarks/loaders.py --n-obs {args.n_obs} --n-vars "
        f"{args.n_vars} --density {args.density} --max-seconds {args.max_seconds:g}` · machine: {machine()}, "
        "shared with other engineers' jobs while measured: load average (1/5/15 min) "
        f"{' / '.join(f'{v:.1f}' for v in load_start)} at the start, "
        f"{' / '.join(f'{v:.1f}' for v in load_end)} at the end; the 1-min value after each row is in the table.",
        "",
        f"Data: synthetic sparse {args.n_obs:,} cells × {args.n_vars:,} genes, {args.density:.0%} non-zero "
        f"(~{nnz / 1e6:.0f} M non-zeros), written to a temporary folder as one h5ad ({size_h5ad:.0f} MB) and as a "
        f"chunk directory of {args.chunk_size:,}-cell CSR `.npz` + parquet chunks ({size_chunks:.0f} MB); written in "
        f"{t_write:.0f} s. One shuffled epoch per row, batch {args.batch_size}, dense float32 minibatches, "
        f"stopped after {args.max_seconds:g} s (the 'cells read' column says how much of the epoch that was; "
        "'random minibatch reads' stop after at most 60 s); each row in a fresh process (peak RSS = the main "
        "process's `VmHWM`, including the in-memory matrix or the chunks held; worker = the largest resident "
        "set of a loader worker process, sampled 5× a second, 0 without workers; the old `ru_maxrss` numbers "
        "were inherited from the parent across fork + exec and are not comparable). "
        "'random minibatch reads' indexes the backed file with sorted random indices per batch.",
        "",
        table.to_markdown(index=False, floatfmt=".0f"),
        "",
        reading(df),
    ]
    write_section("loaders", "\n".join(md))


if __name__ == "__main__":
    main()
