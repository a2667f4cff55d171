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
    adata.obs["total_counts_all_genes"] = np.asarray(adata.X.sum(1)).ravel()
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


def run_scvi(train: sc.AnnData, source: sc.AnnData, epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """scVI counterfactual of ``source`` in the target protocol, on the log1p(normalize_total 1e4) scale.

    Returns ``log1p(1e4 × transform_batch mean)`` per cell, and the same counterfactual sampled as counts
    (negative binomial with scVI's rates and gene dispersions, library sizes drawn from the real target-protocol
    training cells) then normalised and log1p-transformed like the data (the mean of log counts is not the log
    of the mean rate, so only the second is on the scale of the real cells' mean log-expression).
    """
    import scvi

    tr = sc.AnnData(X=train.layers["counts"].copy(), obs=train.obs[["cell_line", "protocol"]].copy())
    tr.var_names = train.var_names
    scvi.model.SCVI.setup_anndata(tr, batch_key="protocol", categorical_covariate_keys=["cell_line"])
    model = scvi.model.SCVI(tr, n_latent=10)
    model.train(max_epochs=epochs, early_stopping=False, enable_progress_bar=False, accelerator="cpu")
    src = sc.AnnData(X=source.layers["counts"].copy(), obs=source.obs[["cell_line", "protocol"]].copy())
    src.var_names = source.var_names
    rate = np.asarray(
        model.get_normalized_expression(src, transform_batch=TARGET, library_size=1.0, return_numpy=True),
        dtype=np.float64,
    )
    rng = np.random.default_rng(0)
    is_target = (train.obs["protocol"] == TARGET).to_numpy()
    libs_model = np.asarray(train.layers["counts"][is_target].sum(1)).ravel()  # counts of modelled genes
    libs_all = train.obs["total_counts_all_genes"].to_numpy()[is_target]  # normalize_total used all genes
    pick = rng.integers(0, len(libs_model), size=rate.shape[0])
    mu = rate * libs_model[pick][:, None]
    theta = np.exp(model.module.px_r.detach().cpu().numpy().astype(np.float64))[None, :]
    counts = rng.poisson(rng.gamma(theta, mu / theta))
    sampled = np.log1p(counts / libs_all[pick][:, None] * 1e4)
    frac = float(np.median(libs_model / libs_all))
    return np.log1p(rate * 1e4 * frac), sampled


def train_cae(train: sc.AnnData, source: sc.AnnData, args) -> tuple[dict[str, list[np.ndarray]], object]:
    """Train one ContextCycleAE per seed on ``train``; counterfactuals of ``source`` in the target protocol.

    Returns the readings per seed (``cf`` decoded, ``res`` residual, ``rec`` reconstruction; ``cf_last`` /
    ``res_last`` with the last epoch's weights when weights are averaged) and the last model.
    """
    sp.models.ContextCycleAE.setup_anndata(train, context_keys=["cell_line", "protocol"])
    readings: dict[str, list[np.ndarray]] = {"cf": [], "res": [], "rec": [], "cf_last": [], "res_last": []}
    for seed in args.seeds:
        sp.settings.seed = seed
        model = sp.models.ContextCycleAE(train, n_latent_base=args.n_latent_base, head_scale=args.head_scale)
        model.train(
            max_epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            loss_weights=json.loads(args.loss_weights),
            plan_kwargs={"lr_schedule": args.lr_schedule},
            batch_size=args.batch_size,
            train_size=1.0,
            early_stopping=False,
            logger="csv",
            enable_checkpointing=False,
            average_last=args.average_last,
        )
        readings["cf"].append(model.get_counterfactual(source, target={"protocol": TARGET}))
        readings["rec"].append(model.get_counterfactual(source, target={}))
        readings["res"].append(model.get_counterfactual(source, target={"protocol": TARGET}, residual=True))
        if model.final_state_ is not None:  # the last epoch's own weights, for comparison
            model.module.load_state_dict(model.final_state_)
            readings["cf_last"].append(model.get_counterfactual(source, target={"protocol": TARGET}))
            readings["res_last"].append(
                model.get_counterfactual(source, target={"protocol": TARGET}, residual=True)
            )
            model.module.load_state_dict(model.averaged_state_)
    return readings, model


def inner_validation(full: sc.AnnData, lines: list[str], args) -> list[dict]:
    """Leave-one-line-out inside each training split: a criterion for settings that never sees the test cells.

    The outer split of line ``L`` hides ``L``'s target-protocol cells. Its inner splits also hide those of one
    other line ``o`` (HVGs chosen on the remaining cells), train on the rest, transform ``o``'s source cells and
    score them against ``o``'s real target cells, which are training cells of the outer split. One training
    with both ``L`` and ``o`` hidden serves the outer splits of ``L`` (scored on ``o``) and of ``o`` (scored on
    ``L``), so the pairs of lines are trained once each. Returns one row per (outer line, inner line).
    """
    obs = full.obs
    out = []
    for i, a in enumerate(lines):
        for b in lines[i + 1 :]:
            hidden = (obs["cell_line"].isin([a, b]) & (obs["protocol"] == TARGET)).to_numpy()
            adata = full
            if args.n_genes:
                rest = full[~hidden].copy()
                sc.pp.highly_variable_genes(rest, n_top_genes=args.n_genes)
                adata = full[:, rest.var["highly_variable"].to_numpy()].copy()
            sources = {o: ((obs["cell_line"] == o) & (obs["protocol"] == SOURCE)).to_numpy() for o in (a, b)}
            src_all = sources[a] | sources[b]
            readings, _ = train_cae(adata[~hidden].copy(), adata[src_all].copy(), args)
            pos = {o: sources[o][src_all] for o in (a, b)}
            for outer, o in ((a, b), (b, a)):
                truth = adata.X[((obs["cell_line"] == o) & (obs["protocol"] == TARGET)).to_numpy()].mean(0)
                src_mean = adata.X[sources[o]].mean(0)
                rest_lines = [q for q in lines if q not in (a, b)]
                shift = np.mean(
                    [
                        adata.X[((obs["cell_line"] == q) & (obs["protocol"] == TARGET)).to_numpy()].mean(0)
                        - adata.X[((obs["cell_line"] == q) & (obs["protocol"] == SOURCE)).to_numpy()].mean(0)
                        for q in rest_lines
                    ],
                    axis=0,
                )

                means = {k: np.mean(v, 0)[pos[o]].mean(0) for k, v in readings.items() if v}
                row = {
                    "outer line": outer,
                    "inner line": o,
                    "decoded": r2_score(truth, means["cf"]),
                    "residual": r2_score(truth, means["res"]),
                    "protocol shift": r2_score(truth, src_mean + shift),
                    "no change": r2_score(truth, src_mean),
                }
                if "cf_last" in means:
                    row["decoded (last epoch)"] = r2_score(truth, means["cf_last"])
                    row["residual (last epoch)"] = r2_score(truth, means["res_last"])
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


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
    ap.add_argument(
        "--loss-weights", type=str, default="{}", help='JSON, e.g. \'{"match": 100, "integration": 10}\''
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    ap.add_argument("--save", type=str, default=None, help="write rows/tables of this run to a JSON file")
    ap.add_argument("--combine", nargs="*", default=None, help="JSON files of earlier runs: report them")
    ap.add_argument("--note", type=str, default="", help="sentence appended to the reading (with --combine)")
    ap.add_argument(
        "--n-genes", type=int, default=2000, help="HVGs of the training split modelled and scored (0 = all)"
    )
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument(
        "--average-last", type=int, default=0, help="keep the mean weights of the last N epochs (SWA)"
    )
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="one model per seed, counterfactuals averaged"
    )
    ap.add_argument("--inner-files", nargs="*", default=[], help="inner-validation JSON files to report")
    ap.add_argument(
        "--inner",
        action="store_true",
        help="only the inner leave-one-line-out validation of each split (no held-out cells scored)",
    )
    args = ap.parse_args()
    sp.settings.progress_bar = "none"
    sp.settings.log_dir = Path("benchmarks/_work/cycle_ae_logs")

    if args.combine:
        rows, contrib_tables = [], []
        for f in args.combine:
            d = json.loads(Path(f).read_text())
            rows += d["rows"]
            contrib_tables += d["tables"]
        run_args = argparse.Namespace(**(vars(args) | d.get("args", {})))
        run_args.no_write, run_args.combine, run_args.note = args.no_write, args.combine, args.note
        run_args.inner_files = args.inner_files
        report(run_args, rows, contrib_tables, n_obs=d["n_obs"], n_vars=d["n_vars"], n_genes=d["n_genes"])
        return
    full = load()
    obs = full.obs
    lines = [
        line
        for line in obs["cell_line"].cat.categories
        if ((obs["cell_line"] == line) & (obs["protocol"] == TARGET)).any()
    ]
    all_lines = list(lines)
    if args.lines:
        lines = [line for line in lines if line in args.lines]
    if args.inner:
        inner = pd.DataFrame(inner_validation(full, all_lines, args))
        print(inner.to_string())
        print(inner.groupby("outer line").mean(numeric_only=True).to_string())
        if args.save:
            Path(args.save).write_text(json.dumps({"inner": inner.to_dict("records"), "args": vars(args)}))
        return
    rows, contrib_tables = [], []
    n_genes = full.n_vars
    for line in lines:
        held = ((obs["cell_line"] == line) & (obs["protocol"] == TARGET)).to_numpy()
        src_mask = ((obs["cell_line"] == line) & (obs["protocol"] == SOURCE)).to_numpy()
        adata = full
        if args.n_genes:  # HVGs of the training split only (the held-out Drop-seq cells take no part)
            tr_all = full[~held].copy()
            sc.pp.highly_variable_genes(tr_all, n_top_genes=args.n_genes)
            adata = full[:, tr_all.var["highly_variable"].to_numpy()].copy()
            n_genes = adata.n_vars
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
        readings, model = train_cae(train, source, args)
        t_model = time.time() - t0
        # several seeds: each cell's counterfactual is the mean over the seeds' models
        cf, rec, cf_res = (np.mean(readings[k], 0) for k in ("cf", "rec", "res"))
        p_model, l_model = label_rates(cf, line, pca, clfs)
        p_res, l_res = label_rates(cf_res, line, pca, clfs)
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
            "ContextCycleAE residual": r2_score(truth, cf_res.mean(0)),
            "no change": r2_score(truth, src_mean),
            "protocol shift": r2_score(truth, src_mean + shift),
            "ContextCycleAE recon (source)": r2_score(src_mean, rec.mean(0)),
            "CAE %Drop-seq": p_model,
            "CAE %own line": l_model,
            "CAE residual %Drop-seq": p_res,
            "CAE residual %own line": l_res,
            "CAE train s": t_model,
            "n genes": int(adata.n_vars),
            "real held-out %Drop-seq": label_rates(adata.X[held], line, pca, clfs)[0],
        }
        if readings["cf_last"]:
            row["ContextCycleAE (last epoch)"] = r2_score(truth, np.mean(readings["cf_last"], 0).mean(0))
            row["ContextCycleAE residual (last epoch)"] = r2_score(
                truth, np.mean(readings["res_last"], 0).mean(0)
            )
        if not args.no_scvi:
            t0 = time.time()
            cf_scvi, cf_scvi_nb = run_scvi(train, source, args.scvi_epochs)
            row["scVI transform_batch"] = r2_score(truth, cf_scvi.mean(0))
            row["scVI transform_batch (NB samples)"] = r2_score(truth, cf_scvi_nb.mean(0))
            row["scVI %Drop-seq"], row["scVI %own line"] = label_rates(cf_scvi_nb, line, pca, clfs)
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
                    "n_genes": n_genes,
                    "args": {k: v for k, v in vars(args).items() if k not in ("save", "combine", "lines")},
                }
            )
        )
    report(args, rows, contrib_tables, n_obs=full.n_obs, n_vars=full.n_vars, n_genes=n_genes)


def inner_table(files: list[str]) -> str:
    """Markdown table of inner-validation runs: per setting and outer split, the mean R² over its inner lines."""
    rows = []
    for f in files:
        d = json.loads(Path(f).read_text())
        a = d["args"]
        weights = json.loads(a.get("loss_weights") or "{}")
        setting = ", ".join(f"{k} {v:g}" for k, v in weights.items())
        setting += f"; {a['epochs']} epochs"
        inner = pd.DataFrame(d["inner"]).groupby("outer line").mean(numeric_only=True)
        readings = [("", "decoded", "residual")]
        if "decoded (last epoch)" in inner and a.get("average_last"):
            readings = [
                (f", mean weights of the last {a['average_last']} epochs", "decoded", "residual"),
                ("", "decoded (last epoch)", "residual (last epoch)"),
            ]
        for suffix, dec, res in readings:
            for outer, r in inner.iterrows():
                rows.append(
                    {
                        "setting": setting + suffix,
                        "outer split": outer,
                        "decoded": r[dec],
                        "residual": r[res],
                        "protocol shift": r["protocol shift"],
                    }
                )
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")


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
            "ContextCycleAE residual",
            "scVI transform_batch",
            "scVI transform_batch (NB samples)",
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
            "CAE residual %Drop-seq",
            "CAE residual %own line",
            "scVI %Drop-seq",
            "scVI %own line",
            "real held-out %Drop-seq",
        ]
        if c in df
    ]
    mean_row = df[r2_cols].mean()
    scvi_cols = [c for c in ("scVI transform_batch", "scVI transform_batch (NB samples)") if c in df]

    def verdict(col: str, pfx: str) -> str:
        best_scvi = df[scvi_cols].max(1) if scvi_cols else None
        checks = {
            "≥ no change": (df[col] >= df["no change"]).all(),
            "≥ protocol shift": (df[col] >= df["protocol shift"]).all(),
            "≥ %Drop-seq 90 %": (df[f"{pfx} %Drop-seq"] >= 0.9).all(),
            "≥ %own line 95 %": (df[f"{pfx} %own line"] >= 0.95).all(),
        }
        if best_scvi is not None:
            checks = {"≥ scVI": (df[col] >= best_scvi).all()} | checks
        return ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items())

    weights = json.loads(getattr(args, "loss_weights", "{}") or "{}")
    md = [
        "## ContextCycleAE — protocol counterfactuals on CellBench (seed 003)",
        "",
        f"Command: `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/cycle_ae.py --epochs {args.epochs} "
        f"--scvi-epochs {args.scvi_epochs} --lr {args.lr} --batch-size {args.batch_size} --lr-schedule "
        f"{getattr(args, 'lr_schedule', 'constant')} --loss-weights '{json.dumps(weights)}'"
        + (f" --average-last {args.average_last}" if getattr(args, "average_last", 0) else "")
        + (f" --seeds {' '.join(map(str, args.seeds))}" if getattr(args, "seeds", [0]) != [0] else "")
        + " --no-write --save /tmp/cae.json`, then `python benchmarks/cycle_ae.py --combine /tmp/cae.json "
        "--inner-files /tmp/inner_*.json` (the inner-validation runs below, `--inner` with each setting) · "
        f"machine: {machine()}, one benchmark at a time, shared with other engineers' jobs (load average "
        "~4–5 while measured).",
        "",
        f"Data: `cellbench_lung5cl_celseq2_dropseq.h5ad`, singlets ({n_obs:,} cells × {n_vars:,} genes), "
        "normalize_total(1e4) + log1p; fields `cell_line` (5) and `protocol` (2). For each line with Drop-seq "
        "cells: train on everything except that line's Drop-seq cells, transform its CEL-seq2 cells to "
        "Drop-seq, R² of the per-gene mean log-expression against the held-out real Drop-seq cells. "
        + (
            f"Genes: in each split the {n_genes:,} highly variable genes of its **training cells** (scanpy "
            "`seurat` flavour; the held-out Drop-seq cells take no part) are modelled and scored by every "
            "method, so the three splits have slightly different gene sets. All 11,533 genes cost ~6× the time "
            "per epoch, which did not fit before the deadline; the two baselines on all genes are given for "
            "reference (the issue's 0.79 / 0.96–0.97 are those). On HVGs the task is harder (no-change R² "
            "0.63–0.68 instead of 0.78–0.80). "
            if n_genes < n_vars
            else "All genes. "
        )
        + f"ContextCycleAE: head_scale {args.head_scale}, n_latent_base {args.n_latent_base}, {args.epochs} "
        f"epochs, Adam lr {args.lr} ({getattr(args, 'lr_schedule', 'constant')} schedule), batch {args.batch_size}, loss weights {weights or 'default'} (others 1; "
        "`match` = mean of generated cells per context combination vs the running mean of real cells of that "
        "combination, which never includes the held-out line × Drop-seq combination). Two readings of the same "
        "model: *decoded* = x̂(target contexts); *residual* = x + x̂(target) − x̂(own) (the heads' change "
        "added to the cell, `get_counterfactual(..., residual=True)`). scVI: batch_key=protocol, cell_line as "
        f"categorical covariate, n_latent 10, {args.scvi_epochs} epochs, `get_normalized_expression("
        "transform_batch='Drop-seq')`, read two ways: log1p of the mean rate × 1e4, and negative-binomial "
        "count samples (scVI's rates and dispersions, library sizes of real Drop-seq training cells) normalised "
        "and log1p-transformed like the data.",
        "",
        "R² of means (held-out):",
        "",
        df[r2_cols].to_markdown(floatfmt=".3f"),
        "",
        f"Mean over lines: {', '.join(f'{k} {v:.3f}' for k, v in mean_row.items())}.",
        "",
        "Labels given to the counterfactual cells by logistic regressions (50 PCs) trained on the real training "
        "cells (targets: ≥ 90 % Drop-seq, ≥ 95 % own line; scVI columns use its NB samples); last column = the "
        "same classifier on the held-out real Drop-seq cells:",
        "",
        df[lab_cols].to_markdown(floatfmt=".3f"),
        "",
        f"Targets, decoded: {verdict('ContextCycleAE', 'CAE')}. Targets, residual: "
        f"{verdict('ContextCycleAE residual', 'CAE residual')}.",
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
        "",
        "Reading. (1) Speed: ContextCycleAE trains at ~1.3–2 s per epoch on these ~950 cells × 2,000 genes "
        "(batch 64, one thread, load ~4); Lightning's `self.log` (~20 calls per step, ~5 ms each) was the one "
        "hot spot and the training plan now sums the metrics over the epoch and logs once. (2) Why `match`: "
        "with the seed's losses alone the counterfactual means overshot (decoded R² −0.08 for H1975, every cell "
        "still labelled Drop-seq): the classifier's target-consistency loss rewards any change that crosses its "
        "decision boundary and does not calibrate its size. The `match` loss (mean of generated cells vs mean "
        "of real cells per context combination) fixes the size. (3) How the setting was chosen, without the "
        "held-out cells: a leave-one-line-out validation inside each training split (table below; `--inner`). "
        "For the split that holds out line L, each other Drop-seq line o also has its Drop-seq cells hidden "
        "(HVGs re-chosen on what is left), the model is trained on the rest, and o's CEL-seq2 → Drop-seq "
        "counterfactual is scored against o's real Drop-seq cells, which are training cells of L's split; the "
        "criterion is the mean over the two inner lines. One training with L and o hidden serves both outer "
        "splits, so each setting costs three trainings. The earlier setting (target 0.1, chosen in the previous "
        "session by looking at H1975's held-out cells) scored below the inner protocol-shift baseline in all six "
        "inner splits; averaging its weights over the last 38 epochs (SWA) was worse still. With the target-"
        "consistency weight at 0 (the loss is still computed and logged, and the classifier still trains on "
        "real cells) the inner criterion is higher than with 0.1 for every outer split, and at or above the "
        "inner protocol shift in 6 of 6 inner splits (residual) / 5 of 6 (decoded), so `target 0` is the one "
        "setting used for all three splits above. A ridge penalty on each head's change (`change` 10, a "
        "shrinkage of the learned shift) was no better than the earlier setting on the two inner splits it "
        "finished and was stopped for time. (4) Diagnosis (H2228 split, earlier setting, 50 last-epoch "
        "snapshots): the protocol head's change is essentially the same vector for every cell and every line "
        "(mean squared difference between two lines' mean change 5e-5, against 0.018 between the real shifts "
        "of H1975 and HCC827), i.e. the model learns an additive protocol shift, as the seed intends, and "
        "cannot know a line-specific part it never saw; with target 0.1 that shift was 4–8 % too large "
        "(regression slope on the other lines' mean shift 1.04–1.08), which is what cost R². (5) So the model "
        "and the protocol-shift baseline use the same information (the other lines' Drop-seq − CEL-seq2 "
        "difference) and the comparison is decided by thousandths; the model is far above scVI's "
        "transform_batch and no change, and its counterfactuals carry the target protocol and their own line "
        "for the classifier." + (f" {args.note}" if getattr(args, "note", "") else ""),
    ]
    if getattr(args, "inner_files", None):
        md += [
            "",
            "Inner validation (R² of means, mean over the two inner lines of each outer split; no held-out "
            "cell is used; the protocol-shift column is the inner baseline, i.e. the shift of the one remaining "
            "Drop-seq line):",
            "",
            inner_table(args.inner_files),
        ]
    write_section("cycle_ae", "\n".join(md))


if __name__ == "__main__":
    main()
