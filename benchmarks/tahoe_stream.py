"""Streaming Tahoe-100M-schema parquet: rows/s and peak RSS of sp.data.read_tahoe vs pyarrow's raw read.

Writes a synthetic dataset in the Tahoe-100M ``expression_data`` schema into a temporary folder (shards of
``--shard`` cells, ``--genes-per-cell`` tokens per cell plus the marker token), then times each reader in its
own subprocess so that peak RSS (``ru_maxrss``) belongs to that reader alone.

    python benchmarks/tahoe_stream.py --cells 1000000 --genes-per-cell 100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TOKENS = 62_710  # Tahoe-100M gene vocabulary size
N_DRUGS, N_LINES, N_PLATES = 380, 50, 14


def write_dataset(folder: Path, *, n_cells: int, genes_per_cell: int, shard: int, seed: int = 0) -> float:
    """Write Tahoe-schema shards; return the size on disk in GB."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    drugs = np.array(["DMSO_TF"] + [f"drug_{i}" for i in range(N_DRUGS - 1)], dtype=object)
    lines = np.array([f"CVCL_{i:04d}" for i in range(N_LINES)], dtype=object)
    plates = np.array([f"plate{i + 1}" for i in range(N_PLATES)], dtype=object)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.Table.from_pandas(
            pd.DataFrame(
                {
                    "gene_symbol": [f"GENE{i}" for i in range(N_TOKENS)],
                    "ensembl_id": [f"ENSG{i:011d}" for i in range(N_TOKENS)],
                    "token_id": np.arange(N_TOKENS) + 4,  # 0..3 are special tokens
                }
            ),
            preserve_index=False,
        ),
        folder / "gene_metadata.parquet",
    )
    data = folder / "expression_data"
    data.mkdir(exist_ok=True)
    for s, start in enumerate(range(0, n_cells, shard)):
        n = min(shard, n_cells - start)
        k = genes_per_cell
        # distinct genes per cell: sorted random draws without replacement via offsets
        genes = np.sort(rng.integers(4, N_TOKENS + 4, size=(n, k)), axis=1)
        genes = np.concatenate([np.full((n, 1), 3), genes], axis=1).astype(np.int64)  # marker token first
        expr = rng.geometric(0.5, size=(n, k)).astype(np.float32)
        expr = np.concatenate([np.full((n, 1), -2.0, np.float32), expr], axis=1)
        offsets = pa.array(np.arange(0, n * (k + 1) + 1, k + 1, dtype=np.int32))
        d = drugs[rng.integers(0, N_DRUGS, n)]
        table = pa.table(
            {
                "genes": pa.ListArray.from_arrays(offsets, pa.array(genes.ravel())),
                "expressions": pa.ListArray.from_arrays(offsets, pa.array(expr.ravel())),
                "drug": pa.array(d, pa.string()),
                "sample": pa.array(np.char.add("smp_", d.astype(str)), pa.string()),
                "BARCODE_SUB_LIB_ID": pa.array(np.full(n, f"lib_{s % 8}", dtype=object), pa.string()),
                "cell_line_id": pa.array(lines[rng.integers(0, N_LINES, n)], pa.string()),
                "moa-fine": pa.array(np.full(n, "unclear", dtype=object), pa.string()),
                "canonical_smiles": pa.array(np.full(n, "CS(C)=O", dtype=object), pa.string()),
                "pubchem_cid": pa.array(np.full(n, "679", dtype=object), pa.string()),
                "plate": pa.array(plates[rng.integers(0, N_PLATES, n)], pa.string()),
            }
        )
        pq.write_table(table, data / f"train-{s:05d}.parquet", row_group_size=10_000)
    return sum(f.stat().st_size for f in folder.rglob("*.parquet")) / 1e9


CHILD = r"""
import json, resource, sys, time
mode, folder, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
import pyarrow.dataset as ds
import scpredict as sp
t = time.perf_counter()  # imports excluded
if mode.startswith("pyarrow"):
    d = ds.dataset(folder + "/expression_data", format="parquet")
    cols = ["genes", "expressions", "drug", "cell_line_id", "plate"]
    if mode == "pyarrow_table":
        n = d.to_table(columns=cols).num_rows
    else:
        n = sum(b.num_rows for b in d.to_batches(columns=cols, batch_size=batch))
else:
    kw = dict(gene_metadata=folder + "/gene_metadata.parquet", batch_size=batch,
              obs_columns=["drug", "cell_line_id", "plate"])
    if mode == "read_tahoe_pseudobulk":
        kw = dict(kw, pseudobulk=["drug", "cell_line_id"])
        kw.pop("obs_columns")
    if mode == "read_tahoe_filtered":
        kw = dict(kw, cell_lines=["CVCL_0001", "CVCL_0002"])
    a = sp.data.read_tahoe(folder + "/expression_data", **kw)
    n = a.uns["tahoe"]["n_cells_read"]
dt = time.perf_counter() - t
print(json.dumps({"mode": mode, "rows": n, "seconds": dt,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def run_child(mode: str, folder: Path, batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(folder), str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--genes-per-cell", type=int, default=100)
    ap.add_argument("--shard", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import machine, write_section

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        size = write_dataset(folder, n_cells=args.cells, genes_per_cell=args.genes_per_cell, shard=args.shard)
        t_write = time.perf_counter() - t
        print(f"wrote {args.cells} cells, {size:.2f} GB in {t_write:.0f} s", flush=True)
        rows = []
        for mode in (
            "pyarrow_table",
            "pyarrow_batches",
            "read_tahoe_cells",
            "read_tahoe_pseudobulk",
            "read_tahoe_filtered",
        ):
            r = run_child(mode, folder, args.batch)
            r["rows_per_s"] = r["rows"] / r["seconds"]
            print(r, flush=True)
            rows.append(r)
    table = "\n".join(
        f"| {r['mode']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['peak_rss_gb']:.2f} |"
        for r in rows
    )
    md = f"""## Tahoe parquet streaming (`sp.data.read_tahoe`)

Synthetic dataset in the Tahoe-100M `expression_data` schema: {args.cells:,} cells in shards of
{args.shard:,} (row groups of 10,000), {args.genes_per_cell} gene tokens per cell plus the marker token,
{N_DRUGS} drugs, {N_LINES} cell lines, {N_PLATES} plates, a {N_TOKENS:,}-token gene table; {size:.2f} GB on
disk. Real Tahoe-100M cells carry more tokens (~1,000-3,000 detected genes), so bytes per row are larger there.
Each reader runs in its own process (time excludes imports; peak RSS = `ru_maxrss` of that process, Python + libraries included);
record batches of {args.batch:,} rows.

| reader | rows | seconds | rows/s | peak RSS (GB) |
|---|---|---|---|---|
{table}

- `pyarrow_table`: `pyarrow.dataset.to_table` of the five needed columns (everything materialised in Arrow);
  `pyarrow_batches`: iterating record batches without converting anything (the floor for any streaming reader).
- `read_tahoe_cells`: full conversion to a sparse AnnData (marker dropped, tokens mapped to genes, obs categoricals).
- `read_tahoe_pseudobulk`: sums per (drug, cell line) while streaming; the cell matrix is never built, so
  memory stays bounded by the batch size and the number of groups.
- `read_tahoe_filtered`: two cell lines of 50, filter pushed down to pyarrow.

Command: `python benchmarks/tahoe_stream.py --cells {args.cells} --genes-per-cell {args.genes_per_cell}`.
Machine: {machine()} (shared with other jobs while this ran, so times are upper bounds).
"""
    if not args.no_report:
        write_section("tahoe_stream", md)
    print(md)


if __name__ == "__main__":
    main()
