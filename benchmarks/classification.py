"""Cell-type classification benchmark: LogReg, XGBoost, Linear, TabNet, SCORE (+ CellTypist if installable).

Datasets: ``mouse_bladder_2100`` (16 classes, raw counts) and Kang 2018 PBMC ``cell_type`` (7 classes,
log-normalised). Protocol: stratified 70/15/15 train/validation/test split (seed 0); every cell normalised to
10⁴ counts + log1p (Kang: ``expm1`` → renormalised); 2,000 highly variable genes chosen on the training cells
only; every model fits on train, uses validation only for early stopping / calibration, and is scored on test.
Prediction speed is measured twice: on the test set (``predict cells/s``) and on a 20,000-cell query made of
test cells repeated, with 2,000 genes (``bulk cells/s``; 20,000 cells, 5,000 for TabNet, 1,000 for SCORE, whose
cost grows with classes × timesteps), end to end and for the model compute alone (``compute cells/s``).

Run: ``python benchmarks/classification.py`` (add ``--quick`` for a smoke run). CellTypist runs in a separate
virtual environment (``/work/celltypist_env``, scikit-learn < 1.8) through this same file in worker mode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CELLTYPIST_PY = Path("/work/celltypist_env/bin/python")
SEED = 0
N_HVG = 2000
TIMING_LOCK = "/tmp/scp_timing.lock"


# ---------------------------------------------------------------- CellTypist worker (runs in its own venv)
def celltypist_worker(train_path: str, test_path: str, out_path: str) -> None:
    """Train CellTypist on ``train_path`` (obs['cell_type']), predict ``test_path``, write JSON."""
    import anndata as ad
    import celltypist

    train, test = ad.read_h5ad(train_path), ad.read_h5ad(test_path)
    t0 = time.perf_counter()
    model = celltypist.train(train, labels="cell_type", check_expression=False, n_jobs=2, max_iter=500)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = celltypist.annotate(test, model=model, majority_voting=False)
    predict_s = time.perf_counter() - t0
    proba = res.probability_matrix
    proba = proba.div(proba.sum(axis=1), axis=0)  # CellTypist reports one-vs-rest sigmoid scores
    out = {
        "version": celltypist.__version__,
        "pred": res.predicted_labels["predicted_labels"].astype(str).tolist(),
        "classes": [str(c) for c in proba.columns],
        "proba": proba.to_numpy().tolist(),
        "train_s": train_s,
        "predict_s": predict_s,
    }
    Path(out_path).write_text(json.dumps(out))


# ---------------------------------------------------------------- timing lock
@contextmanager
def timing_lock():
    """Hold ``/tmp/scp_timing.lock`` (shared by every engineer's timing runs) while measuring speed."""
    import fcntl

    with open(TIMING_LOCK, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------- main benchmark
def load(name: str):
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sps

    import scpredict as sp

    if name == "mouse_bladder":
        adata = sp.datasets.mouse_bladder(path=DATA / "mouse_bladder_2100.h5ad")
        adata.X = sps.csr_matrix(adata.X, dtype=np.float32)
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    else:
        adata = sp.datasets.kang18(path=DATA / "kang18_ifnb_pbmc_valid.h5ad")
        x = sps.csr_matrix(adata.X, dtype=np.float32)
        x.data = np.expm1(x.data)
        s = np.asarray(x.sum(axis=1)).ravel()
        x = sps.diags((1e4 / s).astype(np.float32)) @ x
        x.data = np.log1p(x.data)
        adata = sc.AnnData(X=sps.csr_matrix(x), obs=adata.obs[["cell_type"]].copy(), var=adata.var[[]].copy())
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(str).astype("category")
    sp.pp.split_cells(adata, fractions=(0.7, 0.15, 0.15), stratify_key="cell_type", seed=SEED)
    train = adata[adata.obs["split"] == "train"].copy()
    hvg = sc.pp.highly_variable_genes(train, n_top_genes=N_HVG, flavor="seurat", inplace=False)
    adata = adata[:, hvg["highly_variable"].to_numpy()].copy()
    return adata


def model_specs(quick: bool) -> dict:
    """(class, init kwargs, train kwargs, bulk query size) per row; sizes chosen for a shared 2-core CPU."""
    e = {"max_epochs": 3} if quick else {}
    tabnet = {"n_d": 64, "n_a": 32}
    return {
        "LogisticRegression": ("LogisticRegressionClassifier", {}, {}, 20_000),
        "XGBoost": (
            "XGBoostClassifier",
            {
                "n_estimators": 10 if quick else 150,
                "max_depth": 4,
                "learning_rate": 0.2,
                "colsample_bytree": 0.3,
                "n_jobs": 1,
            },
            {},
            20_000,
        ),
        "Linear": ("LinearClassifier", {}, dict(e), 20_000),
        "TabNet": ("TabNetClassifier", tabnet, dict(e), 5_000),
        "SCORE (TabNet embedding)": (
            "ScoreClassifier",
            {},
            {"max_epochs": 100, "early_stopping_patience": 15, **e},
            1_000,
        ),
        "SCORE (PCA embedding)": (
            "ScoreClassifier",
            {},
            {"max_epochs": 100, "early_stopping_patience": 15, **e},
            1_000,
        ),
    }


def run_dataset(name: str, *, quick: bool, celltypist: bool) -> tuple[list[dict], dict]:
    import numpy as np

    import scpredict as sp
    from scpredict.metrics import classification_report

    adata = load(name)
    split = adata.obs["split"].astype(str).to_numpy()
    fit = adata[split != "test"].copy()
    test = adata[split == "test"].copy()
    fit_split = fit.obs["split"].astype(str).to_numpy()
    tr, va = np.flatnonzero(fit_split == "train"), np.flatnonzero(fit_split == "val")
    truth = test.obs["cell_type"].astype(str).to_numpy()
    reps = 20_000 // test.n_obs + 1
    bulk = test[np.tile(np.arange(test.n_obs), reps)[:20_000]].copy()
    bulk.obs_names_make_unique()
    info = {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_classes": int(adata.obs["cell_type"].nunique()),
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": test.n_obs,
    }
    rows = []
    tabnet = None
    for label, (cls_name, init, train_kw, n_bulk) in model_specs(quick).items():
        cls = getattr(sp.models, cls_name)
        data = fit.copy()
        emb_key = None
        if label == "SCORE (TabNet embedding)":
            emb_key = "X_tabnet"
            data.obsm[emb_key] = tabnet.get_embedding(data)
            test.obsm[emb_key] = tabnet.get_embedding(test)
            bulk_q = bulk[:n_bulk].copy()
            bulk_q.obsm[emb_key] = tabnet.get_embedding(bulk_q)
        if label == "SCORE (PCA embedding)":  # PCA fitted on the training cells only
            from sklearn.decomposition import PCA

            emb_key = "X_pca_train"
            pca = PCA(n_components=50, random_state=SEED).fit(fit.X[tr].toarray())
            data.obsm[emb_key] = pca.transform(data.X.toarray()).astype(np.float32)
            test.obsm[emb_key] = pca.transform(test.X.toarray()).astype(np.float32)
            bulk_q = bulk[:n_bulk].copy()
            bulk_q.obsm[emb_key] = pca.transform(bulk_q.X.toarray()).astype(np.float32)
        cls.setup_anndata(data, labels_key="cell_type", scale="log1p", embedding_key=emb_key)
        model = cls(data, **init)
        kw = {"train_indices": tr, **train_kw}
        if cls_name != "LogisticRegressionClassifier":
            kw["validation_indices"] = va
        if cls_name not in ("LogisticRegressionClassifier", "XGBoostClassifier"):
            kw.update(logger=None, enable_checkpointing=False, progress_bar="none")
        t0 = time.perf_counter()
        model.train(**kw)
        train_s = time.perf_counter() - t0
        if label == "TabNet":
            tabnet = model
        query = bulk_q if emb_key else bulk[:n_bulk].copy()
        prepared = model._prepare(query, keys=model._input_keys())  # compute only: checks/alignment done
        with timing_lock():  # speed measured while no other engineer's timing run is going
            load_avg = os.getloadavg()[0]
            t0 = time.perf_counter()
            proba = model.get_probabilities(test)
            predict_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.get_probabilities(query)
            bulk_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            model._probabilities(prepared, batch_size=1024)
            compute_s = time.perf_counter() - t0
        pred = np.asarray(model.classes_)[proba.argmax(1)]
        rep = classification_report(truth, pred, proba=proba, classes=model.classes_)
        rows.append(
            {
                "dataset": name,
                "model": label,
                "macro_f1": rep["macro_f1"],
                "accuracy": rep["accuracy"],
                "weighted_f1": rep["weighted_f1"],
                "ece": rep["ece"],
                "train_s": train_s,
                "predict_cells_per_s": test.n_obs / predict_s,
                "bulk_cells_per_s": query.n_obs / bulk_s,
                "compute_cells_per_s": query.n_obs / compute_s,
                "bulk_n": query.n_obs,
                "load_avg_1min": load_avg,
                **{f"train_{k}": v for k, v in (model.train_params_ or {}).items() if k == "timestep_range"},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if celltypist:
        rows.append(run_celltypist(name, fit[tr].copy(), test, truth))
    return rows, info


def run_celltypist(name: str, train, test, truth) -> dict:
    import numpy as np

    from scpredict.metrics import classification_report

    row = {"dataset": name, "model": "CellTypist"}
    if not CELLTYPIST_PY.exists():
        row["error"] = f"no CellTypist environment at {CELLTYPIST_PY}"
        return row
    tmp = Path("/tmp/scpredict_celltypist")
    tmp.mkdir(exist_ok=True)
    for a, f in ((train, "train"), (test, "test")):
        b = a.copy()
        b.obs = b.obs[["cell_type"]].copy()
        b.obsm.clear()
        b.uns.clear()
        b.write_h5ad(tmp / f"{name}_{f}.h5ad")
    out = tmp / f"{name}_out.json"
    proc = subprocess.run(
        [
            str(CELLTYPIST_PY),
            __file__,
            "--celltypist-worker",
            str(tmp / f"{name}_train.h5ad"),
            str(tmp / f"{name}_test.h5ad"),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        row["error"] = (
            proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        )
        return row
    res = json.loads(out.read_text())
    proba = np.asarray(res["proba"])
    rep = classification_report(truth, res["pred"], proba=proba, classes=res["classes"])
    row.update(
        macro_f1=rep["macro_f1"],
        accuracy=rep["accuracy"],
        weighted_f1=rep["weighted_f1"],
        ece=rep["ece"],
        train_s=res["train_s"],
        predict_cells_per_s=len(truth) / res["predict_s"],
        version=res["version"],
    )
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict], infos: dict, *, quick: bool, seconds: float, command: str) -> str:
    import pandas as pd
    from _report import machine

    df = pd.DataFrame(rows)
    lines = [
        "## Cell-type classification (`benchmarks/classification.py`)",
        "",
        f"Command: {command} — {machine()}; torch with 1 thread, `OMP_NUM_THREADS=1`; "
        f"{seconds / 60:.1f} min wall time.",
        "",
        "Protocol: stratified 70/15/15 train/validation/test split (seed 0); all cells normalised to 10⁴ counts "
        "+ log1p (Kang: renormalised from its log values); 2,000 highly variable genes (scanpy `seurat` flavour) "
        "chosen on the **training cells only**; models fit on train, use validation only for early stopping / "
        "temperature calibration, and are scored on the held-out test cells. Macro F1 averages the test classes. "
        "`predict cells/s` is measured on the test set (includes input checks and gene alignment); `bulk cells/s` "
        "on a query of test cells repeated (2,000 genes; 20,000 cells, 5,000 for TabNet, 1,000 for SCORE), end to "
        "end (input scale check, gene alignment, model) and `compute cells/s` for the model alone on the "
        "already checked and aligned matrix. "
        "SCORE (TabNet embedding) uses the embedding of the TabNet row above (the seed's pipeline); "
        "SCORE (PCA embedding) works on 50 principal components fitted on the training cells. SCORE's timestep "
        "window and timestep weighting (uniform, or each timestep weighted by the inverse spread of its "
        "class-centred errors) are chosen by the class-balanced NLL of the validation cells "
        "(`timestep_range='auto'`, `timestep_weighting='auto'`). Speed columns were "
        "measured while holding `/tmp/scp_timing.lock` (no other engineer's timing run at the same time); the "
        "1-minute load average at that moment is given per dataset.",
        "",
    ]
    for name, info in infos.items():
        sub = df[df["dataset"] == name]
        loads = sub["load_avg_1min"].dropna() if "load_avg_1min" in sub else pd.Series(dtype=float)
        load_txt = f"; load average while timing {loads.min():.1f}–{loads.max():.1f}" if len(loads) else ""
        lines.append(
            f"**{name}**: {info['n_cells']} cells, {info['n_classes']} classes, {info['n_genes']} genes; "
            f"train/val/test = {info['n_train']}/{info['n_val']}/{info['n_test']}{load_txt}."
        )
        lines.append("")
        lines.append(
            "| model | macro F1 | accuracy | weighted F1 | ECE | train s | predict cells/s | bulk cells/s "
            "| compute cells/s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for _, r in sub.iterrows():
            if isinstance(r.get("error"), str):
                lines.append(f"| {r['model']} | not run: {r['error']} | | | | | | | |")
                continue
            bulk = f"{r['bulk_cells_per_s']:,.0f}" if pd.notna(r.get("bulk_cells_per_s")) else "–"
            comp = f"{r['compute_cells_per_s']:,.0f}" if pd.notna(r.get("compute_cells_per_s")) else "–"
            lines.append(
                f"| {r['model']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | {r['weighted_f1']:.3f} | "
                f"{r['ece']:.3f} | {r['train_s']:.1f} | {r['predict_cells_per_s']:,.0f} | {bulk} | {comp} |"
            )
        lines.append("")
    lines += goals(df)
    lines += [
        "",
        "Notes: the machine (2 cores) was shared with other engineers' jobs during the whole run, so train "
        "seconds are pessimistic and noisy; speed columns were measured under the timing lock (no concurrent "
        "timing run) but not on an idle machine. Linear prediction runs as one sparse matrix product per block "
        "of 16,384 cells (batch norm folded into the weights), like LogReg, instead of a data loader of dense "
        "minibatches. TabNet uses 1.5-entmax masks (scTab's choice; sparsemax keeps only a handful of the "
        "2,000 genes per cell), dropout 0.3 before the head, weight decay 0.05, and early stopping on "
        "validation accuracy. SCORE "
        "prediction costs classes × 20 timesteps × 2 (antithetic) noise draws of the denoiser per cell, with the "
        "input projection and the timestep/class conditioning computed once and shared across classes. "
        "SCORE on TabNet embeddings inherits TabNet's fit to its own training cells (the embeddings of the "
        "training cells are better separated than those of new cells); an unsupervised PCA embedding avoids that. "
        "Sensitivity (separate runs of this session, same splits): Linear / TabNet test macro F1 over "
        "`sp.settings.seed` 0, 1, 2 — mouse bladder 0.852, 0.799, 0.830 / 0.740, 0.797, 0.700; Kang 0.761, 0.770, "
        "0.760 / 0.740, 0.734, 0.744 (TabNet is below Linear on both sets, not only by chance). SCORE (PCA "
        "embedding) with the same trained denoiser but other scoring choices: validation-chosen window with "
        "uniform weights 0.901 (bladder) / 0.816 (Kang); whole schedule with balanced weights 0.838 / 0.817 (the validation NLL picks "
        "uniform weights on both sets in the table above) — "
        "the scoring rule alone moves bladder by 0.06 macro F1 (16 classes, rare ones with 2–5 test cells).",
    ]
    return "\n".join(lines)


def goals(df) -> list[str]:
    import pandas as pd

    out = ["Goals of issue 5:", ""]
    ok = df[~df.get("error", pd.Series(index=df.index, dtype=object)).apply(lambda v: isinstance(v, str))]
    for name, sub in ok.groupby("dataset", sort=False):
        f1 = sub.set_index("model")["macro_f1"]
        best_base = max(f1.get("LogisticRegression", float("nan")), f1.get("XGBoost", float("nan")))
        for s in ("SCORE (TabNet embedding)", "SCORE (PCA embedding)"):
            if s in f1:
                verdict = "met" if f1[s] >= best_base else "**missed**"
                out.append(
                    f"- {name}: {s} macro F1 {f1[s]:.3f} vs best of LogReg/XGBoost {best_base:.3f} — {verdict}."
                )
        if "TabNet" in f1 and "Linear" in f1:
            verdict = "met" if f1["TabNet"] >= f1["Linear"] else "**missed**"
            out.append(f"- {name}: TabNet {f1['TabNet']:.3f} ≥ Linear {f1['Linear']:.3f} — {verdict}.")
        bulk = sub.set_index("model")["bulk_cells_per_s"]
        comp = sub.set_index("model")["compute_cells_per_s"]
        for m in ("Linear", "LogisticRegression"):
            if m in bulk:
                verdict = "met" if bulk[m] >= 50_000 else "**missed** end to end"
                out.append(
                    f"- {name}: {m} prediction {bulk[m]:,.0f} cells/s end to end, {comp[m]:,.0f} cells/s model "
                    f"compute, at 2,000 genes (goal ≥ 50,000) — {verdict}."
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke run (not written to docs)")
    parser.add_argument("--no-celltypist", action="store_true")
    parser.add_argument(
        "--celltypist-only",
        action="store_true",
        help="add CellTypist rows to the saved results of a previous run and rewrite the report",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from saved results")
    parser.add_argument("--datasets", nargs="*", default=["mouse_bladder", "kang18"])
    parser.add_argument(
        "--out", default="/tmp/classification_benchmark.json", help="where the raw results are saved"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="write the report from several saved results (e.g. one process per dataset run side by side)",
    )
    parser.add_argument("--celltypist-worker", nargs=3, metavar=("TRAIN", "TEST", "OUT"))
    args = parser.parse_args()
    if args.celltypist_worker:
        celltypist_worker(*args.celltypist_worker)
        return
    import torch

    torch.set_num_threads(1)  # 2 shared cores: one thread avoids spin contention between engineers' jobs
    import scpredict as sp

    sp.settings.seed = SEED
    sp.settings.progress_bar = "none"
    sp.settings.log_dir = Path("/tmp/scpredict_bench_logs")
    sys.path.insert(0, str(HERE))
    t0 = time.perf_counter()
    saved = Path(args.out)
    if args.merge:
        rows, infos, seconds = [], {}, 0.0
        for f in args.merge:
            state = json.loads(Path(f).read_text())
            rows += state["rows"]
            infos.update(state["infos"])
            seconds = max(seconds, state["seconds"])  # the processes ran side by side
    elif args.report_only:
        state = json.loads(saved.read_text())
        rows, infos, seconds = state["rows"], state["infos"], state["seconds"]
    elif args.celltypist_only:
        state = json.loads(saved.read_text())
        rows, infos, seconds = state["rows"], state["infos"], state["seconds"]
        rows = [r for r in rows if r["model"] != "CellTypist"]
        for name in infos:
            adata = load(name)
            split = adata.obs["split"].astype(str).to_numpy()
            train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
            rows.append(run_celltypist(name, train, test, test.obs["cell_type"].astype(str).to_numpy()))
        seconds += time.perf_counter() - t0
    else:
        rows, infos = [], {}
        for name in args.datasets:
            r, info = run_dataset(name, quick=args.quick, celltypist=not args.no_celltypist)
            rows += r
            infos[name] = info
        seconds = time.perf_counter() - t0
    if not args.merge:
        saved.write_text(
            json.dumps({"rows": rows, "infos": infos, "seconds": seconds}, indent=1, default=str)
        )
    if args.merge:
        command = (
            " and ".join(
                f"`python benchmarks/classification.py --datasets {n} --out {n}.json`" for n in infos
            )
            + " side by side, then `python benchmarks/classification.py --merge "
            + " ".join(f"{n}.json" for n in infos)
            + "`"
        )
    else:
        command = f"`python benchmarks/classification.py{' --quick' if args.quick else ''}`"
    text = report(rows, infos, quick=args.quick, seconds=seconds, command=command)
    print(text)
    if not args.quick and (args.merge or set(args.datasets) == {"mouse_bladder", "kang18"}):
        from _report import write_section

        write_section("classification", text)


if __name__ == "__main__":
    main()
