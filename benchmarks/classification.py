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
    # 3 decision steps (gamma 1.5): chosen on the validation cells of splits 101-105 (+0.019 +- 0.040 macro F1
    # over the 10 validation sets, higher in 8/10, against 1 step; docs/benchmarks.md, fifth round)
    tabnet = {"n_d": 64, "n_a": 32, "n_steps": 3, "gamma": 1.5}
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
            dict(e),
            1_000,
        ),
        "SCORE (PCA embedding)": (
            "ScoreClassifier",
            {},
            dict(e),
            1_000,
        ),
        "SCORE (cross-fitted LogReg embedding)": (  # the built-in default encoder of ScoreClassifier
            "ScoreClassifier",
            {"encoder": "logreg"},
            dict(e),
            1_000,
        ),
    }


def split_fit_test(adata):
    """``(fit, test, tr, va)``: the train + validation cells, the test cells (copies), and the positions of the
    training and validation cells within ``fit`` (from ``obs["split"]``)."""
    import numpy as np

    split = adata.obs["split"].astype(str).to_numpy()
    fit = adata[split != "test"].copy()
    test = adata[split == "test"].copy()
    fit_split = fit.obs["split"].astype(str).to_numpy()
    return fit, test, np.flatnonzero(fit_split == "train"), np.flatnonzero(fit_split == "val")


def split_sizes(adata, test, tr, va) -> dict:
    """Cells, genes, classes and the sizes of the three sets (the ``infos`` entry of a result file)."""
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_classes": int(adata.obs["cell_type"].nunique()),
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": test.n_obs,
    }


def build_model(cls, data, init: dict, train_kw: dict, tr, va, *, embedding_key: str | None = None):
    """Register ``data`` (log1p input, ``cell_type`` labels), build the model and its ``train`` keywords.

    Models trained with Lightning get the validation cells and a quiet trainer; LogReg ignores validation.
    """
    cls.setup_anndata(data, labels_key="cell_type", scale="log1p", embedding_key=embedding_key)
    model = cls(data, **init)
    kw = {"train_indices": tr, **train_kw}
    if cls.__name__ != "LogisticRegressionClassifier":
        kw["validation_indices"] = va
    if cls.__name__ not in ("LogisticRegressionClassifier", "XGBoostClassifier"):
        kw.update(logger=None, enable_checkpointing=False, progress_bar="none")
    return model, kw


def fit_and_score(cls, fit, test, init: dict, train_kw: dict, tr, va, *, embedding_key: str | None = None):
    """Build (:func:`build_model`), train and score one model on a split.

    Returns ``(model, train seconds, validation report, test report)``: ``classification_report`` of the
    validation cells (labels only) and of the test cells (with probabilities); ``fit`` is not modified.
    """
    import time

    import numpy as np

    from scpredict.metrics import classification_report

    data = fit.copy()
    t0 = time.perf_counter()
    model, kw = build_model(cls, data, dict(init), dict(train_kw), tr, va, embedding_key=embedding_key)
    model.train(**kw)
    train_s = time.perf_counter() - t0
    classes = np.asarray(model.classes_)
    y_fit = data.obs["cell_type"].astype(str).to_numpy()
    val = classification_report(
        y_fit[va], classes[model.get_probabilities(data[va]).argmax(1)], classes=classes
    )
    proba = model.get_probabilities(test)
    truth = test.obs["cell_type"].astype(str).to_numpy()
    rep = classification_report(truth, classes[proba.argmax(1)], proba=proba, classes=classes)
    return model, train_s, val, rep


def run_dataset(
    name: str,
    *,
    quick: bool,
    celltypist: bool,
    models: list[str] | None = None,
    tabnet_overrides: dict | None = None,
    score_overrides: dict | None = None,
) -> tuple[list[dict], dict]:
    import numpy as np

    import scpredict as sp
    from scpredict.metrics import classification_report

    adata = load(name)
    fit, test, tr, va = split_fit_test(adata)
    truth = test.obs["cell_type"].astype(str).to_numpy()
    reps = 20_000 // test.n_obs + 1
    bulk = test[np.tile(np.arange(test.n_obs), reps)[:20_000]].copy()
    bulk.obs_names_make_unique()
    info = split_sizes(adata, test, tr, va)
    rows = []
    tabnet = None
    specs = model_specs(quick)
    over = tabnet_overrides or {}
    specs["TabNet"][1].update(over.get("init", {}))
    specs["TabNet"][2].update(over.get("train", {}))
    for row in [r for r in specs if r.startswith("SCORE")]:  # --score: the same overrides for every SCORE row
        specs[row][1].update((score_overrides or {}).get("init", {}))
        specs[row][2].update((score_overrides or {}).get("train", {}))
    wanted = list(specs) if models is None else [m for m in specs if m in models]
    if "SCORE (TabNet embedding)" in wanted and "TabNet" not in wanted:
        wanted.insert(0, "TabNet")  # its embedding is the input of that SCORE row
    for label in wanted:
        cls_name, init, train_kw, n_bulk = specs[label]
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
        model, kw = build_model(cls, data, init, train_kw, tr, va, embedding_key=emb_key)
        t0 = time.perf_counter()
        if label == "TabNet" and over.get("pretrain") is not None:  # self-supervised, training cells only
            pkw = {"validation_indices": va, **over["pretrain"], **({"max_epochs": 2} if quick else {})}
            ph = model.pretrain(indices=tr, **pkw)
            print(f"pretraining: {len(ph) - 1} epochs, {ph.round(3).to_dict('list')}", flush=True)
        model.train(**kw)
        train_s = time.perf_counter() - t0
        val_proba = model.get_probabilities(data[va])
        val_pred = np.asarray(model.classes_)[val_proba.argmax(1)]
        val_rep = classification_report(
            data.obs["cell_type"].astype(str).to_numpy()[va], val_pred, classes=model.classes_
        )
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
                "val_macro_f1": val_rep["macro_f1"],
                "val_accuracy": val_rep["accuracy"],
                "accuracy": rep["accuracy"],
                "weighted_f1": rep["weighted_f1"],
                "ece": rep["ece"],
                "train_s": train_s,
                "predict_cells_per_s": test.n_obs / predict_s,
                "bulk_cells_per_s": query.n_obs / bulk_s,
                "compute_cells_per_s": query.n_obs / compute_s,
                "bulk_n": query.n_obs,
                "load_avg_1min": load_avg,
                **{
                    f"train_{k}": v
                    for k, v in (model.train_params_ or {}).items()
                    if k in ("timestep_range", "class_prior")
                },
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


#: issue 5, third round: choices made on the validation cells of five *extra* splits (split seeds 101–105,
#: disjoint from the main split 0 and from the repeats' 1–15); test macro F1 shown, never used for a choice
THIRD_ROUND = [
    "Third round (issue 5). Where the 307 / 295 validation cells of one split cannot separate two settings,"
    " the choice was made on the validation cells of five further splits per set (split seeds 101–105,"
    " same protocol; not the main split 0 and not the repeated splits 1–15 below), 10 validation sets in"
    " all. Test macro F1 of those splits is shown for transparency and was not used.",
    "",
    "Where TabNet loses to Linear on mouse bladder (seed 0, per-class test F1): class c16 has 6 training"
    " cells and 1 test cell; Linear gets it right (F1 1.00), TabNet does not (0.00). That one cell is"
    " 1/16 of macro F1 (0.0625) — most of the 0.079 gap; the other classes are mixed (TabNet better on"
    " c10, 33 training cells: 0.73 vs 0.50; worse on c12, c4, c6). Accuracy 0.847 vs 0.896. Both fit the"
    " training cells (training accuracy 0.998 / 0.992).",
    "",
    "Logit-adjusted loss (`train(logit_adjustment=τ)`, Menon et al. 2021; training on `logits + τ log π`,"
    " predicting with the plain logits), TabNet (n_d 64, n_a 32) and Linear, splits 101–105 of both"
    " sets; mean over the 10 validation sets, paired differences against τ = 0 (mean ± sd over the 10"
    " splits):",
    "",
    "| model | τ | val macro F1 | Δ val vs τ = 0 | splits higher | bladder test | Kang test |",
    "|---|---|---|---|---|---|---|",
    "| Linear | 0 (default) | 0.780 | – | – | 0.841 | 0.732 |",
    "| Linear | 0.5 | 0.783 | +0.003 ± 0.020 | 5/10 | 0.845 | 0.722 |",
    "| Linear | 1 | 0.771 | −0.008 ± 0.037 | 4/10 | 0.830 | 0.710 |",
    "| TabNet | 0 (default) | 0.805 | – | – | 0.780 | 0.783 |",
    "| TabNet | 0.5 | 0.806 | +0.002 ± 0.032 | 6/10 | 0.787 | 0.771 |",
    "| TabNet | 1 | 0.805 | +0.000 ± 0.030 | 5/10 | 0.807 | 0.775 |",
    "",
    "No gain on validation for either model, so both defaults stay τ = 0 (the option stays, for"
    " long-tailed data). On these five splits TabNet − Linear in test macro F1 is −0.061 on bladder and"
    " +0.051 on Kang — the same picture as the main table and the repeated splits.",
    "",
    "TabNet without its input batch norm (`TabNetClassifier(input_norm='none')`: the log-expression as it"
    " is, prompted by the linear-model diagnosis below, where standardising the genes costs 0.04–0.11 at"
    " convergence), same five splits: mean validation macro F1 bladder 0.811 → 0.836, Kang 0.799 → 0.822;"
    " paired +0.025 ± 0.025, higher in 9/10 splits — the largest validation gain of any TabNet setting."
    " Test macro F1 (not used): bladder 0.780 → 0.768, Kang 0.783 → 0.801; bladder stays far below Linear"
    " (0.841 on these splits). It is **not** the default: without the standardisation the masks stop"
    " selecting genes (a gene's magnitude already carries its signal) — on the synthetic test data marker"
    " genes get 1.5× the mean mask importance of other genes with the input batch norm and 0.9× without —"
    " so `get_feature_importance`, TabNet's interpretation, would point nowhere. It is an option"
    " (`input_norm='none'`) for users who want the accuracy and not the masks.",
    "",
    "SCORE class prior (`class_prior`), one denoiser per split (the benchmark setting), both priors"
    " applied to its scores with their own fitted temperature; mean ± sd over splits 101–105:",
    "",
    "| set | LogReg val | LogReg test | SCORE uniform val | SCORE uniform test | SCORE empirical val"
    " | SCORE empirical test | `auto` picked the prior |",
    "|---|---|---|---|---|---|---|---|",
    "| mouse_bladder | 0.831 ± 0.034 | 0.841 ± 0.048 | 0.865 ± 0.013 | 0.869 ± 0.024 | 0.852 ± 0.020"
    " | 0.886 ± 0.020 | 1/5 |",
    "| kang18 | 0.842 ± 0.017 | 0.837 ± 0.027 | 0.843 ± 0.030 | 0.825 ± 0.038 | 0.861 ± 0.017"
    " | 0.814 ± 0.021 | 4/5 |",
    "",
    "Over the 10 validation sets the two priors tie (mean validation macro F1 0.854 uniform, 0.856"
    " empirical), and on each set the validation cells favour the prior that the test cells do not (the"
    " reverse of split 0, where bladder's validation cells favoured the prior and Kang's did not). The"
    " prior question is noise at this size; `class_prior='auto'` stays. SCORE's own validation F1 is"
    " optimistic (it calibrates on those cells): on Kang it is at or above LogReg's on validation and"
    " below it on test.",
    "",
    "SCORE on a stacked embedding (seed 0, Kang; both cross-fitted the same way, out-of-fold for the"
    " training cells): LogReg logits 0.857 / 0.846 (val / test), XGBoost margins 0.847 / 0.824, both"
    " concatenated 0.853 / 0.830 — no gain, not adopted. Embedding new cells the way the training cells"
    " were embedded — scoring each validation / test cell under each of the five fold models' logits and"
    " averaging the five score vectors, instead of scoring the mean map once — gave a mean validation"
    " macro F1 of 0.845 / 0.854 (uniform / empirical prior) against 0.843 / 0.861 on Kang's splits"
    " 101–105 (test 0.824 / 0.817 vs 0.825 / 0.814): no gain at 5× the prediction cost, not adopted.",
    "",
    "Why Linear and LogReg differ although both are linear softmax models (seed 0, test macro F1; a"
    " diagnostic, no default changed): the same objective as scikit-learn's LogReg (mean cross-entropy"
    " + λ/2 ‖W‖², full batch, L-BFGS to convergence in torch, float64 dense input) on the log1p values as"
    " they are, and on per-gene standardised values (training-cell mean and sd, what the Linear row's"
    " input batch norm does):",
    "",
    "| fit | bladder | Kang |",
    "|---|---|---|",
    "| scikit-learn LogReg, C = 1, log1p as is (dense float64 input here) | 0.802 | 0.855 |",
    "| torch L-BFGS, λ = 1/n, log1p as is | 0.812 | 0.860 |",
    "| torch L-BFGS, λ = 10/n, log1p as is | 0.819 | 0.854 |",
    "| torch L-BFGS, λ = 100/n, log1p as is | 0.801 | 0.855 |",
    "| torch L-BFGS, λ = 1/n, standardised | 0.769 | 0.745 |",
    "| torch L-BFGS, λ = 10/n, standardised | 0.766 | 0.750 |",
    "| torch L-BFGS, λ = 100/n, standardised | 0.756 | 0.772 |",
    "| Linear row: standardised, AdamW minibatches, early stopping (kept epoch 0–2) | 0.852 | 0.761 |",
    "",
    "A torch softmax layer fitted to convergence reproduces LogReg, so the difference is the input"
    " scaling and the fitting recipe, not the library. Standardising the genes costs 0.04–0.11 at"
    " convergence on both sets (it lifts rare, noisy genes to the scale of the markers); the Linear row's"
    " early-stopped AdamW fit on standardised genes is better than any converged fit on bladder (0.852) and"
    " worse on Kang (0.761). The Linear row keeps scTab's recipe (its linear baseline is trained like its"
    " TabNet); `LogisticRegressionClassifier` is the converged L2 fit. TabNet ≥ Linear is therefore a"
    " comparison with scTab's linear recipe: against LogReg, TabNet is below on both sets (bladder 0.773"
    " vs 0.806 here, 0.751 vs 0.820 over the repeated splits; Kang 0.829 vs 0.855, 0.775 vs 0.837).",
    "",
    "The cross-fitted LogReg embedding is now `ScoreClassifier`'s built-in default encoder"
    " (`encoder='logreg'`, `n_folds=5`): the same out-of-fold logits for the training cells (identical to"
    " the earlier benchmark code) and, for every other cell, the mean of the five affine maps stored in"
    " the model; the denoiser reads the precomputed embeddings through a plain tensor loader. The row"
    " above is that encoder. Its numbers moved from the previous run of this table (bladder 0.894 → 0.887,"
    " Kang 0.846 → 0.838 test macro F1): same embedding, but a different order of training batches gives"
    " a different denoiser, and `class_prior='auto'` flipped on both sets (bladder: uniform now, Kang:"
    " empirical) — the size of the run-to-run noise of one SCORE fit.",
    "",
    "SCORE with a Gaussian base denoiser (`ScoreClassifier(gaussian_base=True)`, fourth round): the"
    " denoiser is the exact noise prediction of one Gaussian per class, `√(1−ᾱ) (ᾱ Σ_y + (1−ᾱ) I)⁻¹ (x_t −"
    " √ᾱ μ_y)`, plus the MLP as a residual that starts at zero (class covariances shrunk towards the pooled"
    " one), so the untrained model already scores like a quadratic discriminant. Prompted by QDA on the"
    " cross-fitted logits matching LogReg on Kang (above) while the MLP denoiser alone stays slightly"
    " below. Command: `python benchmarks/classification_selection.py --datasets <set> --out <set>.json"
    ' --configs \'{"default": {}, "gaussian_base": {"init": {"gaussian_base": true}}}\'` (splits'
    " 101–105; one process per set, `OMP_NUM_THREADS=1`), then `--report` of both files:",
    "",
    "| set | denoiser | val macro F1 | test macro F1 | Δ val vs MLP (mean ± sd) | splits higher | epochs |",
    "|---|---|---|---|---|---|---|",
    "| mouse_bladder | MLP (default) | 0.879 | 0.877 | – | – | 255 |",
    "| mouse_bladder | Gaussian base + MLP residual | 0.867 | 0.878 | −0.012 ± 0.013 | 1/5 | 192 |",
    "| kang18 | MLP (default) | 0.850 | 0.827 | – | – | 230 |",
    "| kang18 | Gaussian base + MLP residual | 0.849 | 0.830 | −0.001 ± 0.012 | 3/5 | 189 |",
    "",
    "Pooled over the 10 validation sets: −0.007 ± 0.013 (4/10 higher), so the default stays the plain MLP"
    " denoiser; the option stays (tested: its Gaussian part is the exact posterior mean of the noise, and"
    " untrained it classifies two same-mean, different-covariance Gaussians within 0.03 of the Bayes"
    " classifier, where an untrained MLP is at chance). On split 0 (same code, not a choice) it gives test"
    " macro F1 0.891 (bladder) and 0.842 (Kang) against 0.887 / 0.838 for the default. Where the Kang"
    " ceiling lies: Gaussian classifiers on the same cross-fitted logits, with 0 / 5 / 10 / 20"
    " training-set principal components appended, give a mean validation macro F1 of 0.855 / 0.847 / 0.825"
    " / 0.815 (scikit-learn QDA, covariance regularisation 0.1) on splits 101–105 against LogReg's 0.842 —"
    " extra dimensions only add noise to a generative classifier here, and every linear or Gaussian model"
    " tried on Kang ends within ±0.02 of LogReg, the spread of LogReg's own splits.",
    "",
    "TabNet with a re-balanced head (decoupling representation and classifier, Kang et al. 2020; a"
    " diagnostic on the default TabNet fit of each split, the embedding frozen): the head's class weight"
    " vectors τ-normalised (`w_k / ‖w_k‖^τ`, τ = 0.5 / 1, bias dropped), a class-balanced logistic"
    " regression re-fitted on the training cells' embeddings (C = 0.1 / 1), and nearest class mean"
    " (cosine). Mean validation macro F1 over splits 101–105, default head vs τ = 1: bladder 0.811 vs 0.821"
    " (one split +0.061, four −0.006 to 0), Kang 0.799 vs 0.796; pooled +0.004, 3/10 higher — a tie, so"
    " no head change was adopted (the default head's validation F1 is also the one early stopping chose"
    " its epoch by). The re-balanced heads do move test macro F1 up on bladder (split 0: 0.773 → 0.833"
    " with τ = 1, 0.835 nearest class mean; splits 101–105: 0.780 → 0.798; Kang 0.783 → 0.791), the rare-class effect"
    " diagnosed above — but even then below Linear (0.852 on split 0), so no head choice closes the"
    " TabNet ≥ Linear goal on mouse bladder. Class-balanced re-fitting (cRT) did not help (bladder"
    " validation 0.803 / 0.798 at C = 0.1 / 1, below the default head in 5/5 splits).",
    "",
    "Rerun after the review fixes (this table). A code review found that SCORE's score of a cell depended on"
    " the other cells of the query: its noise draws came from one random stream per call, so they depended"
    " on the cell's position (reversing the order of 600 cells moved a probability by up to 0.10 and changed"
    " one label). Each cell's noise is now a deterministic function of the cell (counter-based normals keyed"
    " by its embedding values and `sp.settings.seed`): its scores no longer depend on the query, and"
    " different cells still get independent draws. Only the SCORE rows changed (every other row reproduced"
    " to the last digit; XGBoost now always reads CSR without stored zeros, which the benchmark's sparse"
    " input already was): cross-fitted LogReg embedding bladder 0.887 → 0.881, Kang 0.838 → 0.822; PCA"
    " embedding 0.848 → 0.837 / 0.816 → 0.824; TabNet embedding 0.774 → 0.774 / 0.816 → 0.818 (test macro"
    " F1). Only the noise realisations differ, so these moves are the scoring noise of one SCORE fit at 20"
    " timesteps × 2 draws; on Kang the validation cells also flipped `class_prior='auto'` from the empirical"
    " prior to none. Re-scoring this rerun's Kang model under 10 noise seeds with its calibration fixed gives"
    " test macro F1 0.820 ± 0.005 at 2 draws per timestep and 0.821 ± 0.001 at 8: the scoring noise of the"
    " test cells is small, and most of the move comes from the calibration (timestep window, class prior,"
    " temperature) chosen on validation cells scored with other draws. Over 15 more splits the rerun SCORE"
    " rows stay where they were (see the repeated-splits section). The Gaussian-base and re-balanced-head"
    " experiments above were run before this change.",
    "",
    "Fifth round (issue 5): TabNet's number of decision steps, and early stopping on the validation macro F1."
    " Settings that the single split-0 validation set could not separate (earlier tables: 2–3 decision steps"
    " had the highest bladder test accuracy but a low bladder validation F1) were compared by the selection"
    " protocol above. Command: `python benchmarks/classification_selection.py --model TabNet --datasets"
    " <set> --out <set>.json --configs '<JSON>'` (splits 101–105, one process per set,"
    " `OMP_NUM_THREADS=1`), then `--report` of both files; 'default' is the row's previous setting (n_d 64,"
    " n_a 32, one decision step). Validation / test macro F1, mean over the five splits; Δ: paired"
    " difference of validation macro F1 against the previous setting:",
    "",
    "| set | TabNet setting | val macro F1 | test macro F1 | Δ val (mean ± sd) | splits higher |",
    "|---|---|---|---|---|---|",
    "| mouse_bladder | 1 step (previous) | 0.811 | 0.780 | – | – |",
    "| mouse_bladder | 2 steps, γ 1.0 | 0.765 | 0.755 | −0.045 ± 0.022 | 0/5 |",
    "| mouse_bladder | 2 steps, γ 1.0, weight EMA 0.9 | 0.768 | 0.734 | −0.042 ± 0.020 | 0/5 |",
    "| mouse_bladder | **3 steps, γ 1.5** | 0.807 | 0.789 | −0.003 ± 0.042 | 3/5 |",
    "| mouse_bladder | 1 step, stop on validation macro F1 | 0.827* | 0.805 | +0.016 ± 0.027* | 3/5 |",
    "| mouse_bladder | 3 steps, γ 1.5, stop on validation macro F1 | 0.832* | 0.788 | +0.021 ± 0.060* | 3/5 |",
    "| kang18 | 1 step (previous) | 0.799 | 0.783 | – | – |",
    "| kang18 | 2 steps, γ 1.0 | 0.827 | 0.790 | +0.028 ± 0.010 | 5/5 |",
    "| kang18 | 2 steps, γ 1.0, weight EMA 0.9 | 0.829 | 0.795 | +0.030 ± 0.016 | 5/5 |",
    "| kang18 | **3 steps, γ 1.5** | 0.840 | 0.810 | +0.041 ± 0.024 | 5/5 |",
    "| kang18 | 1 step, stop on validation macro F1 | 0.800* | 0.779 | +0.001 ± 0.001* | 2/5 |",
    "| kang18 | 3 steps, γ 1.5, stop on validation macro F1 | 0.845* | 0.807 | +0.047 ± 0.019* | 5/5 |",
    "",
    "Pooled over the 10 validation sets, 3 steps with γ 1.5 raise validation macro F1 by +0.019 ± 0.040"
    " (higher in 8/10; a tie on bladder, +0.041 in 5/5 on Kang) and 2 steps lower it (−0.009 / −0.006), so"
    " the benchmark's TabNet row now uses 3 decision steps, γ 1.5 (the class defaults stay scTab's: one step,"
    " n_d 128, n_a 64, meant for large training sets; the user guide gives the small-set setting). The main"
    " table above and the TabNet rows of the repeated splits were rerun with it. `validation_macro_f1` (and"
    " `validation_balanced_accuracy`) is a new early-stopping monitor of `TabNetClassifier` and"
    " `LinearClassifier`: the macro F1 of the whole validation epoch from its confusion matrix (a"
    " `torchmetrics` metric, not an average over batches). *Its validation numbers are biased upwards —"
    " the kept epoch is the one that maximises that same number, whereas the accuracy monitor picks the"
    " epoch by accuracy — so the rows marked * overstate it; even so it changes nothing on Kang and is"
    " within the noise on bladder. It was not made the default (stopping stays on validation accuracy) and"
    " is there for users whose rare cell types matter more than the common ones.",
    "",
    "With 3 steps the split-0 TabNet rows moved from 0.773 to 0.782 (bladder) and from 0.829 to 0.802 (Kang)"
    " test macro F1 — the second against the direction of the validation evidence, which is the size of the"
    " noise of one 295-cell test set; SCORE (TabNet embedding) follows its input (0.774 → 0.776, 0.818 →"
    " 0.789). Every other row reproduced to the last digit. The goal verdicts are unchanged: TabNet ≥ Linear"
    " is met on Kang and missed on mouse bladder.",
    "",
    "SCORE, last two candidates of the Kang search (seed-0 validation above: a wider denoiser and 8 noise"
    " draws per timestep had a higher Kang validation F1 than the default, within that set's noise), by the"
    " selection protocol (`--model 'SCORE (cross-fitted LogReg embedding)'`, splits 101–105). Validation /"
    " test macro F1, mean over five splits, and the paired difference of validation macro F1 against the"
    " default: mouse bladder default 0.878 / 0.881; width 256 with lr 10⁻³ 0.876 / 0.885 (−0.003 ± 0.010,"
    " 2/5); 8 draws 0.880 / 0.880 (+0.002 ± 0.006, 3/5). Kang default 0.846 / 0.831; width 256 0.857 / 0.820"
    " (+0.011 ± 0.011, 5/5); 8 draws 0.851 / 0.827 (+0.005 ± 0.007, 4/5). Pooled over the 10 validation sets:"
    " +0.004 ± 0.012 and +0.003 ± 0.006 (7/10 higher each) — within the noise, and SCORE's own validation F1"
    " is optimistic (it calibrates on those cells), at twice the training time or 4× the prediction cost;"
    " neither was adopted. The Kang goal stays missed on split 0 and a tie over the repeated splits.",
]


def report(rows: list[dict], infos: dict, *, quick: bool, seconds: float, command: str) -> str:
    import pandas as pd
    from _report import machine

    df = pd.DataFrame(rows)
    lines = [
        "## Cell-type classification (`benchmarks/classification.py`)",
        "",
        f"Command: {command} — {machine()}; torch with 1 thread, `OMP_NUM_THREADS=1`; "
        f"{seconds / 60:.1f} min of run time (summed over the processes).",
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
        "SCORE (PCA embedding) works on 50 principal components fitted on the training cells; SCORE "
        "(cross-fitted LogReg embedding) is `ScoreClassifier`'s built-in default encoder (`encoder='logreg'`): "
        "the class logits of five logistic regressions fitted on the training cells (each training cell "
        "embedded by the fold model that did not see it, every other cell by the mean of the five; a "
        "supervised embedding whose training cells look like new cells); its train seconds include the five "
        "fits. SCORE's timestep "
        "window and timestep weighting (uniform, or each timestep weighted by the inverse spread of its "
        "class-centred errors) are chosen by the class-balanced NLL of the validation cells "
        "(`timestep_range='auto'`, `timestep_weighting='auto'`); its class prior (Bayes' rule with the "
        "training class frequencies) is used only where it raises the validation macro F1 "
        "(`class_prior='auto'`). Speed columns were "
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
        "minibatches. TabNet (n_d 64, n_a 32, three decision steps with γ 1.5 — fifth round below) uses 1.5-entmax masks with attention scores "
        "divided by `mask_temperature=8` (≈ 450 of the 2,000 genes per mask at initialisation instead of ≈ 20; "
        "still sparse), label smoothing 0.1, dropout 0.3 before the head, weight decay 0.05, early stopping "
        "on validation accuracy, and validation / the kept epoch on an exponential moving average of its weights "
        "(decay 0.95 per step, with warm-up) — the defaults, chosen on the validation cells (table below). SCORE trains "
        "its denoiser with early-stopping patience 60 (the new default; 15 stopped it long before the class "
        "differences of the denoising error had formed). SCORE prediction costs classes × 20 timesteps × 2 "
        "(antithetic) noise draws of the denoiser per cell, with the input projection and the timestep/class "
        "conditioning computed once and shared across classes. SCORE on TabNet embeddings inherits TabNet's fit "
        "to its own training cells (the embeddings of the training cells are better separated than those of new "
        "cells); PCA and the cross-fitted logits avoid that. The train seconds and speeds of SCORE (TabNet "
        "embedding) and SCORE (PCA embedding) do not include computing their input embedding (the TabNet row, "
        "the PCA), which is done before the timers; those of SCORE (cross-fitted LogReg embedding) include its "
        "built-in encoder (five logistic regressions to fit, one affine map to apply). Validation sets are small (307 / 295 cells; bladder "
        "classes with 1–4 validation cells), so validation macro F1 differences below ≈ 0.03 are noise.",
        "",
        "Search on the validation split (separate runs of this session, same splits and seed; test macro F1 "
        "shown for transparency, never used for a choice). Val / test macro F1:",
        "",
        "| TabNet setting (n_d 64, n_a 32) | bladder val | bladder test | Kang val | Kang test |",
        "|---|---|---|---|---|",
        "| previous defaults (`mask_temperature=1`, no smoothing) | 0.771 | 0.740 | 0.792 | 0.740 |",
        "| gene dropout 0.2 / 0.5 (augmentation) | – | – | 0.770 / 0.735 | 0.767 / 0.669 |",
        "| label smoothing 0.1 | – | – | 0.835 | 0.761 |",
        "| lr 2·10⁻³ (instead of 10⁻²) | – | – | 0.723 | 0.701 |",
        "| `mask_temperature=4` | 0.796 | 0.765 | 0.798 | 0.760 |",
        "| `mask_temperature=8` | 0.785 | 0.760 | 0.803 | 0.761 |",
        "| **`mask_temperature=8` + label smoothing 0.1** (chosen: best mean validation F1, 0.820) | 0.845 | "
        "0.760 | 0.795 | 0.773 |",
        "| `mask_temperature=4` + balanced class weights | 0.768 | 0.791 | 0.817 | 0.760 |",
        "| same + gene dropout 0.1 + label smoothing 0.1 | 0.780 | 0.786 | 0.742 | 0.737 |",
        "| *from here on: on top of the chosen defaults, `--tabnet '<JSON>'`* | | | | |",
        "| self-supervised pretraining (`pretrain`, 50 epochs, obfuscation 0.2) | 0.822 | 0.756 | 0.836 | 0.811 |",
        "| self-supervised pretraining, obfuscation 0.5 | 0.866 | 0.808 | 0.822 | 0.776 |",
        "| 3 decision steps, γ 1.5 | 0.791 | 0.768 | 0.868 | 0.807 |",
        "| batch 256 (one 256-cell ghost batch) | 0.781 | 0.737 | 0.806 | 0.835 |",
        "| scTab schedule: lr 0.005 × 0.9 per epoch (`lr_decay`) | 0.764 | 0.749 | 0.772 | 0.779 |",
        "| *issue-5 TabNet search, second round (same protocol; on top of the defaults above unless stated)* | | | | |",
        "| defaults above, rerun with the current code | 0.845 | 0.760 | 0.795 | 0.773 |",
        "| weight EMA (`ema_decay`) 0.99 per step, no warm-up | 0.026 | 0.026 | – | – |",
        "| weight EMA 0.97, no warm-up | 0.864 | 0.767 | 0.819 | 0.802 |",
        "| weight EMA 0.97, with warm-up | 0.829 | 0.762 | 0.791 | 0.804 |",
        "| weight EMA 0.95, no warm-up | 0.862 | 0.773 | 0.816 | 0.829 |",
        "| **weight EMA 0.95, with warm-up** (new default; mean validation F1 0.839) | 0.862 | 0.773 | 0.816 | 0.829 |",
        "| weight EMA 0.9, no warm-up | 0.865 | 0.755 | 0.801 | 0.826 |",
        "| weight EMA 0.8, no warm-up | 0.853 | 0.759 | 0.801 | 0.828 |",
        "| EMA 0.9 + label smoothing 0.2 | 0.842 | 0.788 | 0.810 | 0.826 |",
        "| EMA 0.9 + dropout 0.5 | 0.785 | 0.790 | – | – |",
        "| EMA 0.9 + balanced class weights | 0.826 | 0.769 | – | – |",
        "| EMA 0.9 + self-supervised pretraining, obfuscation 0.5 | 0.756 | 0.757 | – | – |",
        "| EMA 0.9 + 2 decision steps, γ 1.0 | 0.798 | 0.863 | 0.847 | 0.844 |",
        "| EMA 0.95 + 2 decision steps, γ 1.0 | 0.796 | 0.807 | – | – |",
        "| EMA 0.95 + cosine learning rate | 0.832 | 0.786 | – | – |",
        "| EMA 0.95 (new default) + 3 decision steps, γ 1.5 | 0.789 | 0.782 | 0.870 | 0.802 |",
        "| `mask_temperature=32` (denser masks) | 0.820 | 0.754 | – | – |",
        "| n_d 32, n_a 32 | 0.770 | 0.690 | – | – |",
        "| n_d 128, n_a 64 (the class defaults) | 0.773 | 0.762 | – | – |",
        "| batch 64, ghost batch 64 | 0.722 | 0.713 | – | – |",
        "| ghost batch 32 (batch 128) | 0.756 | 0.712 | – | – |",
        "| 2 decision steps, γ 1.0 | 0.751 | 0.768 | – | – |",
        "| mixup α 0.4 (`mixup_alpha`) | 0.777 | 0.742 | – | – |",
        "| early stopping on validation loss | 0.836 | 0.740 | – | – |",
        "| patience 40, up to 200 epochs (no better epoch after the first stop) | 0.845 | 0.760 | – | – |",
        "| weight decay 0.2 | 0.844 | 0.756 | – | – |",
        "| dropout 0.5 before the head | 0.772 | 0.811 | – | – |",
        '| cosine learning rate (`lr_schedule="cosine"`) | 0.836 | 0.766 | – | – |',
        "| lr 5·10⁻³ | 0.769 | 0.753 | – | – |",
        "| balanced class weights | 0.823 | 0.779 | – | – |",
        "| self-supervised pretraining, obfuscation 0.5, rerun on the Lightning pretraining loop | 0.786 | 0.762 | – | – |",
        "| Linear (reference) | 0.840 | 0.852 | 0.773 | 0.761 |",
        "",
        "| SCORE setting (Kang) | val | test |",
        "|---|---|---|",
        "| PCA-50, patience 15 (previous benchmark setting) | – | 0.816 |",
        "| PCA-50, patience 60 | 0.752 | 0.816 |",
        "| cross-fitted LogReg logits, patience 15 | 0.833 | 0.828 |",
        "| cross-fitted logits + PCA-20, patience 15 | 0.815 | 0.794 |",
        "| **cross-fitted logits, patience 60** (new default) | 0.857 | 0.843 |",
        "| same, up to 1,000 epochs / patience 100 (stops at the same epoch) | 0.857 | 0.843 |",
        "| same, 8 noise draws per timestep | 0.866 | 0.831 |",
        "| same, denoiser width 256, lr 10⁻³ | 0.884 | 0.830 |",
        "",
        "The last two have a higher validation F1 than the default but were tried on Kang only, within the "
        "validation noise, at 4× the prediction cost / twice the training time; defaults were left unchanged. "
        "For reference, scikit-learn's LDA / QDA on the same cross-fitted logits reach 0.854 / 0.855 on the Kang "
        "test cells, and on 50 training-set principal components at most 0.833–0.840 — the PCA embedding "
        "loses the information that separates Kang's CD4/CD8 T cells and the two monocyte types, so SCORE "
        "needs a supervised embedding there. On mouse bladder the cross-fitted logits gave 0.906 / 0.883 "
        "(val / test) with patience 15. TabNet stays well below Linear on mouse bladder in every setting tried "
        "(best test 0.808, with pretraining at obfuscation 0.5: above the defaults on both validation sets but by less than the validation noise, so pretraining stays an option, `model.pretrain(...)`); the gap is in accuracy (0.82–0.86 vs 0.90), not only in the rare classes. "
        "The longer SCORE training (patience 60) was chosen on Kang's validation cells; on mouse bladder it also "
        "raises the validation macro F1 of SCORE (PCA embedding) (0.907 → 0.918, separate runs) but moves its "
        "test macro F1 from 0.901 (patience 15, the previous version of this table) to 0.848 at an unchanged "
        "test accuracy of 0.906 — a few cells of the rare classes (1–4 test cells each) — so that row's bladder "
        "verdict flips with it.",
        "",
        "Second round of the TabNet search (issue 5; each run `python benchmarks/classification.py "
        "--datasets <set> --models Linear TabNet --tabnet '<JSON>'`, `OMP_NUM_THREADS=1`, same 2-core "
        "CPU shared with other jobs), ranked by the mean validation macro F1 over the two sets. Weight "
        "EMA (`TabNetClassifier.train(ema_decay=...)`, validation and the kept epoch on the averaged "
        "weights) is the only change that raised the validation F1 of both sets. EMA 0.97 without "
        "warm-up had the highest mean (0.842 vs 0.839 for 0.95), but fell to 0.810 with the warm-up, "
        "whereas 0.95 gives the same numbers with and without it (the average forgets its start), and "
        "0.99 collapsed (the average lagged about 100 steps, 9 epochs, behind weights that move fast at "
        "lr 10⁻², stayed at the majority class, and early stopping kept it). So the new default is 0.95 "
        "with warm-up (mean over the two warm-up variants: 0.839 vs 0.826 for 0.97). Compared with the "
        "previous defaults it raises both validation and both test scores (bladder 0.760 → 0.773, Kang "
        "0.773 → 0.829), but the mouse-bladder goal stays **missed** (0.773 vs Linear 0.852). Only one "
        "setting reached Linear on the bladder test cells: EMA 0.9 + 2 decision steps with γ 1.0, at "
        "0.863. Its bladder validation F1 (0.798) is among the lowest, so it was not chosen. The "
        "validation cells (307, classes with 1–4 cells) cannot tell these settings apart: the same "
        "pretraining setting went from 0.866 to 0.786 validation F1 between the old and the Lightning "
        "pretraining loop (different random streams), and settings with 2–3 decision steps have the "
        "highest bladder test accuracy (0.86–0.88) but a low bladder validation F1. `mixup_alpha`, "
        '`lr_schedule="cosine"` and `ema_decay` are new options of `TabNetClassifier`; `pretrain` now '
        "runs on the Lightning loop.",
        "",
        "SCORE, second round (cross-fitted LogReg logits, patience 60 unless stated; val / test macro F1;"
        ' "rescored": the saved denoisers re-evaluated with 4 noise draws per timestep; the class prior '
        "is Bayes' rule, `softmax(score / T + log π)` with the training class frequencies π and T fitted "
        "with the prior):",
        "",
        "| SCORE setting | bladder val | bladder test | Kang val | Kang test |",
        "|---|---|---|---|---|",
        "| no class prior, `softmax(score / T)` (previous default; previous benchmark rows) | 0.901 | "
        "0.891 | 0.857 | 0.846 |",
        "| same, denoiser seeds 1 / 2 | 0.920 / 0.916 | 0.907 / 0.908 | 0.857 / 0.834 | 0.828 / 0.828 |",
        '| class prior (`class_prior="empirical"`), benchmark setting | 0.925 | 0.894 | 0.847 | 0.867 |',
        '| **`class_prior="auto"`** (new default: the prior only if it raises the validation macro F1; '
        "bladder: prior, Kang: none) | 0.925 | 0.894 | 0.857 | 0.846 |",
        "| no prior → class prior, mean of 3 denoiser seeds (rescored) | 0.913 → 0.930 | 0.898 → 0.893 | "
        "0.854 → 0.848 | 0.830 → 0.861 |",
        "| PCA-50 embedding: no prior → class prior (benchmark setting) | 0.918 → 0.903 | 0.848 → 0.810 |"
        " 0.752 → 0.719 | 0.816 → 0.832 |",
        "| weight EMA 0.995 (warm-up), 3 seeds: no prior / class prior (rescored) | – | – | 0.863 / 0.852"
        " | 0.838 / 0.864 |",
        "| 3 denoiser seeds ensembled (errors averaged; 40 timesteps × 4 draws): no prior / class prior |"
        " 0.935 / 0.949 | 0.903 / 0.895 | 0.865 / 0.856 | 0.822 / 0.854 |",
        '| `standardize="global"` + class prior, seeds 0 / 1 / 2 | 0.918 / – / – | 0.879 / – / – | 0.860 '
        "/ 0.850 / 0.831 | 0.851 / 0.842 / 0.851 |",
        "| embedding: cross-fitted log-probabilities instead of logits (seed 0): no prior / class prior |"
        " – | – | 0.847 / 0.823 | 0.805 / 0.844 |",
        "| embedding: logits of LogReg with C = 0.1 (seed 0, class prior) | – | – | 0.845 | 0.843 |",
        "",
        "The validation cells do not settle the class prior: mean validation macro F1 over the 9 rescored"
        " runs (3 denoiser seeds × bladder, Kang, Kang with EMA) is 0.877 without and 0.877 with it — "
        "higher on mouse bladder's validation cells in 3/3 seeds, lower on Kang's in 6/6 (by "
        "0.001–0.016), and lower on both sets with the PCA embedding. The default is therefore "
        '`class_prior="auto"`, which takes the prior on mouse bladder and not on Kang, so Kang\'s goal '
        "stays missed. On Kang's *test* cells the prior raised macro F1 in 6/6 runs (by 0.014–0.043; "
        "0.867 in the benchmark setting, above LogReg's 0.855) — a test-set observation, not used for any"
        ' choice (`--score \'{"init": {"class_prior": "empirical"}}\'` reproduces it). Denoiser seeds alone'
        " move Kang's test macro F1 by up to 0.02 (0.828–0.846 without the prior). More scoring timesteps"
        " barely matter: 10 / 20 / 40 evenly spaced timesteps (the same timesteps and noise for every "
        "class) give a mean validation macro F1 of 0.882 / 0.884 / 0.885 over 8 runs of both sets (class "
        "prior), so the default stays 20. Weight EMA raised Kang's validation macro F1 by 0.009 without /"
        " 0.004 with the prior (within the noise; not tried on bladder); global standardisation and the "
        "other embeddings did not raise it; ensembling three denoisers raised bladder's (0.932 → 0.949 in"
        " the same 40 × 4 evaluation) but not Kang's (0.856 → 0.856) nor either test F1, at 3× the "
        "training and prediction cost. None of them was adopted.",
        "",
        *THIRD_ROUND,
    ]
    return "\n".join(lines)


def goals(df) -> list[str]:
    import pandas as pd

    out = ["Goals of issue 5:", ""]
    ok = df[~df.get("error", pd.Series(index=df.index, dtype=object)).apply(lambda v: isinstance(v, str))]
    for name, sub in ok.groupby("dataset", sort=False):
        f1 = sub.set_index("model")["macro_f1"]
        best_base = max(f1.get("LogisticRegression", float("nan")), f1.get("XGBoost", float("nan")))
        for s in [m for m in f1.index if str(m).startswith("SCORE")]:
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
        "--models",
        nargs="+",
        metavar="ROW",
        help="run only these rows (names as in the table, e.g. TabNet Linear 'SCORE (PCA embedding)'); "
        "the results are not written to docs/benchmarks.md unless merged later",
    )
    parser.add_argument(
        "--out", default="/tmp/classification_benchmark.json", help="where the raw results are saved"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="write the report from several saved results (one process per dataset, run one after the other)",
    )
    parser.add_argument(
        "--tabnet",
        default=None,
        metavar="JSON",
        help='overrides of the TabNet row, e.g. \'{"init": {"n_steps": 3}, "train": {"lr": 0.005}, '
        '"pretrain": {"max_epochs": 50}}\' ("pretrain": call TabNetClassifier.pretrain on the training cells '
        "first); for the validation search, with --models TabNet",
    )
    parser.add_argument(
        "--score",
        default=None,
        metavar="JSON",
        help='overrides of every SCORE row, e.g. \'{"init": {"class_prior": "uniform"}, "train": {"lr": 0.001}}\'; '
        "for the validation search, with --models 'SCORE (cross-fitted LogReg embedding)'",
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
            seconds += state["seconds"]
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
            r, info = run_dataset(
                name,
                quick=args.quick,
                celltypist=not args.no_celltypist,
                models=args.models,
                tabnet_overrides=json.loads(args.tabnet) if args.tabnet else None,
                score_overrides=json.loads(args.score) if args.score else None,
            )
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
            + " (one process per dataset, in parallel; `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1`), then "
            + "`python benchmarks/classification.py --merge "
            + " ".join(f"{n}.json" for n in infos)
            + "`"
        )
    else:
        command = f"`python benchmarks/classification.py{' --quick' if args.quick else ''}`"
    text = report(rows, infos, quick=args.quick, seconds=seconds, command=command)
    print(text)
    if (
        not args.quick
        and not args.models
        and (args.merge or set(args.datasets) == {"mouse_bladder", "kang18"})
    ):
        from _report import write_section

        write_section("classification", text)


if __name__ == "__main__":
    main()
