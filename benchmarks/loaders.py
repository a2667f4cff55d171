"""Loader benchmark: cells/s and peak RSS for in-memory vs chunk directory vs backed h5ad, prefetch on/off.

A synthetic sparse cells × genes matrix is written to a temporary folder as an ``.h5ad`` and as a chunk
directory (:func:`scpredict.data.write_chunks`). Each configuration runs one full epoch of shuffled minibatches
(dense float32 tensors, as a model sees them) in its own subprocess, so that peak RSS (the process plus its
loader workers) is measured per configuration. With ``--compute`` each batch also goes through a small
matmul to stand in for a model step, which is what background prefetching can overlap with.

Run: ``python benchmarks/loaders.py [--n-obs 200000] [--n-vars 2000] [--density 0.05]``.
"""

from __future__ import annotations

import argparse
import json
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


def run_config(
    folder: Path, kind: str, workers: int, batch_size: int, chunk_size: int, compute: bool
) -> dict:
    import torch

    import scpredict as sp

    torch.manual_seed(0)
    w = torch.randn(0, 0)
    t0 = time.perf_counter()
    n = 0
    n_batches = 0

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
        t0 = time.perf_counter()
        perm = np.random.default_rng(0).permutation(x.shape[0])
        for s in range(0, len(perm), batch_size):
            idx = np.sort(perm[s : s + batch_size])
            xb = torch.from_numpy(x[idx].toarray())
            step(xb)
            n += xb.shape[0]
            n_batches += 1
    elif kind in ("chunks", "h5ad"):
        src = folder / ("chunks" if kind == "chunks" else "data.h5ad")
        ds = sp.data.ChunkedDataset(
            src,
            batch_size=batch_size,
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            chunk_size=chunk_size,
        )
        for batch in ds:
            step(batch.X)
            n += batch.X.shape[0]
            n_batches += 1
    elif kind == "backed_random":
        import anndata as ad

        adata = ad.read_h5ad(folder / "data.h5ad", backed="r")
        perm = np.random.default_rng(0).permutation(adata.n_obs)
        deadline = time.perf_counter() + 60  # random access is slow: time a bounded part of the epoch
        for s in range(0, len(perm), batch_size):
            idx = np.sort(perm[s : s + batch_size])
            xb = torch.from_numpy(adata.X[idx].toarray())
            step(xb)
            n += xb.shape[0]
            n_batches += 1
            if time.perf_counter() > deadline:
                break
    seconds = time.perf_counter() - t0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "cells": n,
        "batches": n_batches,
        "seconds": seconds,
        "cells_per_s": n / seconds,
        "peak_rss_mb": rss_self,
        "peak_rss_worker_mb": rss_children,
    }


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
    args = ap.parse_args()

    if args.config is not None:
        out = run_config(
            Path(args.folder), args.config, args.workers, args.batch_size, args.chunk_size, args.compute
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
        for compute in (False, True):
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
        ["loader", "model step", "cells_per_s", "peak_rss_mb", "peak_rss_worker_mb", "cells", "seconds"]
    ].rename(
        columns={
            "cells_per_s": "cells/s",
            "peak_rss_mb": "peak RSS main (MB)",
            "peak_rss_worker_mb": "peak RSS worker (MB)",
            "cells": "cells read",
            "seconds": "s",
        }
    )
    print(table.to_string(index=False))
    if args.no_write:
        return
    from _report import machine, write_section

    nnz = int(args.n_obs * args.n_vars * args.density)
    md = [
        "## Loaders — in-memory vs chunk directory vs backed h5ad (seed 003 two-level loader)",
        "",
        f"Command: `python benchmarks/loaders.py --n-obs {args.n_obs} --n-vars {args.n_vars} --density {args.density}` "
        f"· machine: {machine()} (shared with other jobs while measured).",
        "",
        f"Data: synthetic sparse {args.n_obs:,} cells × {args.n_vars:,} genes, {args.density:.0%} non-zero "
        f"(~{nnz / 1e6:.0f} M non-zeros), written to a temporary folder as one h5ad ({size_h5ad:.0f} MB) and as a "
        f"chunk directory of {args.chunk_size:,}-cell CSR `.npz` + parquet chunks ({size_chunks:.0f} MB); written in "
        f"{t_write:.0f} s. The issue asks for 500k × 2k; on this shared 2-core CPU that size did not fit the time "
        "budget, so the size above was used (throughputs are per cell, so they carry over; in-memory RSS grows "
        "with the data, chunked RSS with the chunk size). One shuffled epoch per row, batch "
        f"{args.batch_size}, dense float32 minibatches; each row in a fresh process (peak RSS = the main process; "
        "worker = the largest loader worker). 'random minibatch reads' indexes the backed file with sorted "
        "random indices per batch (stopped after 60 s).",
        "",
        table.to_markdown(index=False, floatfmt=".0f"),
    ]
    write_section("loaders", "\n".join(md))


if __name__ == "__main__":
    main()
