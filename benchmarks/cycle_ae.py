"""ContextCycleAE counterfactual benchmark on CellBench (5 lung lines × CEL-seq2 / Drop-seq).

For each of the three lines that have Drop-seq cells: train without that line's Drop-seq cells, transform the
line's CEL-seq2 cells to Drop-seq, and compare the mean log-expression with the held-out real Drop-seq cells
(R² over all genes). Beside it: scVI's ``transform_batch`` counterfactual trained on the same split (batch key
= protocol, cell line as a categorical covariate), the no-change baseline (source mean) and the protocol-shift
baseline (source mean + mean Drop-seq − CEL-seq2 shift of the other lines). A logistic-regression classifier
trained on real training cells checks the labels of the counterfactuals. Per-field contribution table.

Run: ``python benchmarks/cycle_ae.py [--epochs 150] [--scvi-epochs 150]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score

import scpredict as sp

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cellbench_lung5cl_celseq2_dropseq.h5ad"
TARGET = "Drop-seq"
SOURCE = "CEL-seq2"


def load() -> sc.AnnData:
    adata = sc.read_h5ad(DATA)
    adata = adata[adata.obs["demuxlet_cls"] == "SNG"].copy()
    adata.obs["cell_line"] = adata.obs["cell_line"].astype(str).astype("category")
    adata.obs["protocol"] = adata.obs["protocol"].astype(str).astype("category")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
    return adata


def fit_classifiers(train: sc.AnnData):
    pca = PCA(n_components=50, random_state=0).fit(train.X)
    z = pca.transform(train.X)
    clfs = {
        key: LogisticRegression(max_iter=2000).fit(z, train.obs[key].astype(str).to_numpy())
        for key in ("protocol", "cell_line")
    }
    return pca, clfs


def label_rates(x: np.ndarray, line: str, pca, clfs) -> tuple[float, float]:
    z = pca.transform(x)
    return float(np.mean(clfs["protocol"].predict(z) == TARGET)), float(
        np.mean(clfs["cell_line"].predict(z) == line)
    )


def run_scvi(train: sc.AnnData, source: sc.AnnData, epochs: int) -> np.ndarray:
    import scvi

    tr = sc.AnnData(X=train.layers["counts"].copy(), obs=train.obs[["cell_line", "protocol"]].copy())
    tr.var_names = train.var_names
    scvi.model.SCVI.setup_anndata(tr, batch_key="protocol", categorical_covariate_keys=["cell_line"])
    model = scvi.model.SCVI(tr, n_latent=10)
    model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False, accelerator="cpu")
    src = sc.AnnData(X=source.layers["counts"].copy(), obs=source.obs[["cell_line", "protocol"]].copy())
    src.var_names = source.var_names
    norm = model.get_normalized_expression(src, transform_batch=TARGET, library_size=1e4, return_numpy=True)
    return np.log1p(np.asarray(norm))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--scvi-epochs", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lines", nargs="*", default=None)
    ap.add_argument("--no-scvi", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--n-latent-base", type=int, default=64)
    ap.add_argument("--head-scale", type=float, default=0.0159)
    ap.add_argument("--save", type=str, default=None, help="write rows/tables of this run to a JSON file")
    ap.add_argument("--combine", nargs="*", default=None, help="JSON files of earlier runs: report them")
    ap.add_argument("--n-genes", type=int, default=2000, help="HVGs modelled and scored (0 = all genes)")
    args = ap.parse_args()
    sp.settings.progress_bar = "none"
    sp.settings.log_dir = Path("benchmarks/_work/cycle_ae_logs")

    if args.combine:
        rows, contrib_tables = [], []
        for f in args.combine:
            d = json.loads(Path(f).read_text())
            rows += d["rows"]
            contrib_tables += d["tables"]
        report(args, rows, contrib_tables, n_obs=d["n_obs"], n_vars=d["n_vars"], n_genes=d["n_genes"])
        return
    full = load()
    adata = full
    if args.n_genes:
        sc.pp.highly_variable_genes(full, n_top_genes=args.n_genes)
        adata = full[:, full.var["highly_variable"].to_numpy()].copy()
    obs = adata.obs
    lines = [
        line
        for line in obs["cell_line"].cat.categories
        if ((obs["cell_line"] == line) & (obs["protocol"] == TARGET)).any()
    ]
    all_lines = list(lines)
    if args.lines:
        lines = [line for line in lines if line in args.lines]
    rows, contrib_tables = [], []
    for line in lines:
        held = ((obs["cell_line"] == line) & (obs["protocol"] == TARGET)).to_numpy()
        src_mask = ((obs["cell_line"] == line) & (obs["protocol"] == SOURCE)).to_numpy()
        train = adata[~held].copy()
        source = adata[src_mask].copy()
        truth = adata.X[held].mean(0)
        src_mean = source.X.mean(0)
        others = [o for o in all_lines if o != line]
        shift = np.mean(
            [
                adata.X[((obs["cell_line"] == o) & (obs["protocol"] == TARGET)).to_numpy()].mean(0)
                - adata.X[((obs["cell_line"] == o) & (obs["protocol"] == SOURCE)).to_numpy()].mean(0)
                for o in others
            ],
            axis=0,
        )
        pca, clfs = fit_classifiers(train)

        t0 = time.time()
        sp.models.ContextCycleAE.setup_anndata(train, context_keys=["cell_line", "protocol"])
        model = sp.models.ContextCycleAE(train, n_latent_base=args.n_latent_base, head_scale=args.head_scale)
        model.train(
            max_epochs=args.epochs,
            lr=args.lr,
            batch_size=128,
            train_size=1.0,
            early_stopping=False,
            logger="csv",
            enable_checkpointing=False,
        )
        t_model = time.time() - t0
        cf = model.get_counterfactual(source, target={"protocol": TARGET})
        rec = model.get_counterfactual(source, target={})
        p_model, l_model = label_rates(cf, line, pca, clfs)
        model.contributions(train, key_added="contrib")
        entry = train.uns["contrib"]
        table = {"held-out line": line, **{f"L2 {k}": v for k, v in entry["l2_field"].items()}}
        for field in ("cell_line", "protocol"):
            for cat, v in entry["l2_category"][field].items():
                table[f"{field}={cat}"] = v
        contrib_tables.append(table)

        full_truth = full.X[held].mean(0)
        full_src = full.X[src_mask].mean(0)
        full_shift = np.mean(
            [
                full.X[((obs["cell_line"] == o) & (obs["protocol"] == TARGET)).to_numpy()].mean(0)
                - full.X[((obs["cell_line"] == o) & (obs["protocol"] == SOURCE)).to_numpy()].mean(0)
                for o in others
            ],
            axis=0,
        )
        row = {
            "line": line,
            "no change (all genes)": r2_score(full_truth, full_src),
            "protocol shift (all genes)": r2_score(full_truth, full_src + full_shift),
            "n source": int(src_mask.sum()),
            "n held-out": int(held.sum()),
            "ContextCycleAE": r2_score(truth, cf.mean(0)),
            "no change": r2_score(truth, src_mean),
            "protocol shift": r2_score(truth, src_mean + shift),
            "ContextCycleAE recon (source)": r2_score(src_mean, rec.mean(0)),
            "CAE %Drop-seq": p_model,
            "CAE %own line": l_model,
            "CAE train s": t_model,
            "real held-out %Drop-seq": label_rates(adata.X[held], line, pca, clfs)[0],
        }
        if not args.no_scvi:
            t0 = time.time()
            cf_scvi = run_scvi(train, source, args.scvi_epochs)
            row["scVI transform_batch"] = r2_score(truth, cf_scvi.mean(0))
            row["scVI %Drop-seq"], row["scVI %own line"] = label_rates(cf_scvi, line, pca, clfs)
            row["scVI train s"] = time.time() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.save:
        Path(args.save).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "tables": contrib_tables,
                    "n_obs": full.n_obs,
                    "n_vars": full.n_vars,
                    "n_genes": adata.n_vars,
                }
            )
        )
    report(args, rows, contrib_tables, n_obs=full.n_obs, n_vars=full.n_vars, n_genes=adata.n_vars)


def report(
    args, rows: list[dict], contrib_tables: list[dict], *, n_obs: int, n_vars: int, n_genes: int
) -> None:
    df = pd.DataFrame(rows).set_index("line")
    ct = pd.DataFrame(contrib_tables).set_index("held-out line")
    print(df.T.to_string())
    print(ct.T.to_string())
    if args.no_write:
        return
    from _report import machine, write_section

    r2_cols = [
        c
        for c in [
            "ContextCycleAE",
            "scVI transform_batch",
            "no change",
            "protocol shift",
            "no change (all genes)",
            "protocol shift (all genes)",
        ]
        if c in df
    ]
    lab_cols = [
        c
        for c in [
            "CAE %Drop-seq",
            "CAE %own line",
            "scVI %Drop-seq",
            "scVI %own line",
            "real held-out %Drop-seq",
        ]
        if c in df
    ]
    mean_row = df[r2_cols].mean()
    md = [
        "## ContextCycleAE — protocol counterfactuals on CellBench (seed 003)",
        "",
        f"Command: `python benchmarks/cycle_ae.py --epochs {args.epochs} --scvi-epochs {args.scvi_epochs} "
        f"--lr {args.lr}` · machine: {machine()}",
        "",
        f"Data: `cellbench_lung5cl_celseq2_dropseq.h5ad`, singlets ({n_obs:,} cells × {n_vars:,} genes), "
        "normalize_total(1e4) + log1p; fields `cell_line` (5) and `protocol` (2). For each line with Drop-seq "
        "cells: train on everything except that line's Drop-seq cells, transform its CEL-seq2 cells to "
        "Drop-seq, R² of the per-gene mean log-expression against the held-out real Drop-seq cells. "
        + (
            f"Genes: the {n_genes:,} highly variable genes (scanpy, all cells) are modelled and scored by every "
            "method — the shared 2-core CPU was too loaded to train on all 11,533 genes before the deadline; the "
            "two baselines on all genes are given for reference (the issue's 0.79 / 0.96–0.97 are those). On HVGs "
            "the task is harder (no-change R² drops to ~0.6). "
            if n_genes < n_vars
            else "All genes. "
        )
        + f"ContextCycleAE: defaults (head_scale {args.head_scale}, n_latent_base {args.n_latent_base}), "
        f"{args.epochs} epochs, Adam lr {args.lr}, batch 128. scVI: batch_key=protocol, cell_line as "
        f"categorical covariate, n_latent 10, {args.scvi_epochs} epochs, "
        "`get_normalized_expression(transform_batch='Drop-seq', library_size=1e4)` then log1p.",
        "",
        "R² of means (held-out):",
        "",
        df[r2_cols].to_markdown(floatfmt=".3f"),
        "",
        f"Mean over lines: {', '.join(f'{k} {v:.3f}' for k, v in mean_row.items())}.",
        "",
        "Labels given to the counterfactual cells by logistic regressions (50 PCs) trained on the real training "
        "cells (targets: ≥ 90 % Drop-seq, ≥ 95 % own line); last column = the same classifier on the held-out "
        "real Drop-seq cells:",
        "",
        df[lab_cols].to_markdown(floatfmt=".3f"),
        "",
        f"Training time (s): ContextCycleAE {df['CAE train s'].mean():.0f}"
        + (f", scVI {df['scVI train s'].mean():.0f}" if "scVI train s" in df else "")
        + " per split. Reconstruction R² of the source means: "
        + ", ".join(f"{v:.3f}" for v in df["ContextCycleAE recon (source)"])
        + ".",
        "",
        "Per-field contributions (mean L2 norm of each head's output over the training cells; per category = "
        "mean over that category's cells):",
        "",
        ct.T.to_markdown(floatfmt=".3g"),
    ]
    write_section("cycle_ae", "\n".join(md))


if __name__ == "__main__":
    main()
