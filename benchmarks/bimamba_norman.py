"""BiMambaPredictor on the Norman 2019 CRISPRa screen (K562), beside the baselines.

Protocols (data: the Norman part of ``../shared/data/norman19_mcfaline23_devel.h5ad``, 3,375 cells x 500 HVG,
log1p-normalized; gene positions from ``gene_positions_gencode_v19.tsv``; pathway features learnt on control
cells only):

(a) the seed's protocol: a random 80/20 cell split; validation R² (variance-weighted, ``sklearn.r2_score`` on
    cells x genes) of the model against the per-perturbation-mean oracle (each validation cell predicted by the
    training mean of its perturbation). Target: model >= 0.95 x oracle.
(b) held-out combinations whose singles are all seen (``sp.pp.split_combinations``, half of the eligible
    combinations): ``pearson_delta_de20`` (top 20 genes by |true Δ| vs control) of every model on the held-out
    combinations. Target: BiMamba >= AdditiveBaseline.
(c) training cost: time of training batches with per-condition batching (the backbone once per condition of
    a batch) vs a per-cell forward (once per cell), same batches. Target: >= 20x.

Usage: ``python benchmarks/bimamba_norman.py [--epochs 15] [--no-write]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_KW = {
    "d_model": 32,
    "n_layers": 2,
    "gene_identity_dim": 16,
    "position_dim": 8,
    "n_frequencies": 8,
    "cond_dim": 32,
}
TRAIN_KW = {"progress_bar": "none", "logger": None, "enable_checkpointing": False}


def load():
    import anndata as ad

    import scpredict as sp

    adata = ad.read_h5ad(DATA / "norman19_mcfaline23_devel.h5ad")
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).astype("category")
    sp.pp.annotate_gene_positions(adata, DATA / "gene_positions_gencode_v19.tsv")
    return adata


def r2(pred: np.ndarray, true: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(true, pred, multioutput="variance_weighted"))


def protocol_a(adata, epochs: int) -> dict:
    import scpredict as sp

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    perm = rng.permutation(adata.n_obs)
    n_tr = int(0.8 * adata.n_obs)
    tr, va = np.sort(perm[:n_tr]), np.sort(perm[n_tr:])
    ad = adata.copy()
    sp.models.BiMambaPredictor.setup_anndata(ad, perturbation_key="perturbation")
    sub = ad[tr].copy()
    sp.pp.pathway_features(
        sub, perturbation_key="perturbation", control="control", n_features=16, max_epochs=50
    )
    ad.varm["X_pathway"] = sub.varm["X_pathway"]
    model = sp.models.BiMambaPredictor(ad, **MODEL_KW)
    model.train(
        max_epochs=epochs, train_indices=tr, validation_indices=va, early_stopping_patience=5, **TRAIN_KW
    )
    x = np.asarray(ad.X.toarray() if hasattr(ad.X, "toarray") else ad.X)
    val = ad[va].copy()
    model.predict(val, key_added="bm")
    labels = ad.obs["perturbation"].astype(str).to_numpy()
    means = {p: x[tr][labels[tr] == p].mean(0) for p in np.unique(labels[tr])}
    oracle = np.stack([means[p] for p in labels[va]])
    r_model, r_oracle = r2(val.layers["bm"], x[va]), r2(oracle, x[va])
    hist = model.history.get("validation_r2")
    return {
        "r2_model": r_model,
        "r2_oracle": r_oracle,
        "ratio": r_model / r_oracle,
        "epochs": len(hist),
        "seconds": time.perf_counter() - t0,
        "live_val_r2": float(hist.iloc[-1, 0]),
    }


def protocol_b(adata, epochs: int) -> dict:
    import scpredict as sp

    t0 = time.perf_counter()
    ad = adata.copy()
    sp.pp.split_combinations(
        ad, perturbation_key="perturbation", control="control", test_fraction=0.5, seed=0
    )
    split_key = "split"
    is_test = (ad.obs[split_key].astype(str) == "test").to_numpy()
    train = ad[~is_test].copy()
    test = ad[is_test].copy()
    held = sorted(set(test.obs["perturbation"].astype(str)))
    x_tr = np.asarray(train.X.toarray() if hasattr(train.X, "toarray") else train.X)
    x_te = np.asarray(test.X.toarray() if hasattr(test.X, "toarray") else test.X)
    lab_te = test.obs["perturbation"].astype(str).to_numpy()
    true = np.stack([x_te[lab_te == p].mean(0) for p in held])
    ctrl = x_tr[train.obs["perturbation"].astype(str).to_numpy() == "control"].mean(0)
    de = [np.argsort(-np.abs(t - ctrl)) for t in true]
    scores = {}
    for name in ("ControlBaseline", "MeanBaseline", "AdditiveBaseline", "LinearBaseline"):
        cls = getattr(sp.models, name)
        b = train.copy()
        cls.setup_anndata(b, perturbation_key="perturbation")
        m = cls(b)
        m.train()
        unsupported = m._unsupported(held)
        if unsupported:
            scores[name] = None
            continue
        pred = np.asarray(m.get_perturbation_profiles(held).X)
        scores[name] = float(np.mean(sp.metrics.pearson_delta_de20(pred, true, ctrl, de_genes=de)))
    sp.models.BiMambaPredictor.setup_anndata(train, perturbation_key="perturbation")
    sp.pp.pathway_features(train, n_features=16, max_epochs=50)
    model = sp.models.BiMambaPredictor(train, **MODEL_KW)
    rng = np.random.default_rng(0)
    perm = rng.permutation(train.n_obs)
    n_va = train.n_obs // 10
    model.train(
        max_epochs=epochs,
        train_indices=np.sort(perm[n_va:]),
        validation_indices=np.sort(perm[:n_va]),
        early_stopping_patience=5,
        **TRAIN_KW,
    )
    pred = np.asarray(model.get_perturbation_profiles(held).X)
    scores["BiMambaPredictor"] = float(np.mean(sp.metrics.pearson_delta_de20(pred, true, ctrl, de_genes=de)))
    return {"held_out": held, "scores": scores, "seconds": time.perf_counter() - t0}


class _BatchTimer:
    """Lightning callback: wall time of every training batch (forward, backward, optimiser step)."""

    def __new__(cls):
        import lightning.pytorch as pl

        class Timer(pl.Callback):
            def __init__(self):
                self.times: list[float] = []

            def on_train_batch_start(self, *args):
                self._t = time.perf_counter()

            def on_train_batch_end(self, *args):
                self.times.append(time.perf_counter() - self._t)

        return Timer()


def protocol_c(adata, n_batches: int) -> dict:
    import scpredict as sp

    ad = adata.copy()
    sp.models.BiMambaPredictor.setup_anndata(ad, perturbation_key="perturbation")
    idx = np.arange(ad.n_obs)
    out = {}
    for per_cell in (False, True):
        model = sp.models.BiMambaPredictor(ad, **MODEL_KW)
        timer = _BatchTimer()
        model.train(
            max_epochs=1,
            train_indices=idx,
            validation_indices=np.array([], dtype=int),
            limit_train_batches=n_batches + 1,
            per_cell=per_cell,
            callbacks=[timer],
            **TRAIN_KW,
        )
        out["per_cell" if per_cell else "per_condition"] = float(np.mean(timer.times[1:]))  # first = warm-up
    n_batches_epoch = -(-ad.n_obs // 256)
    return {
        "sec_per_batch": out,
        "speedup": out["per_cell"] / out["per_condition"],
        "batches_per_epoch": n_batches_epoch,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--c-batches", type=int, default=2)
    parser.add_argument("--protocols", default="abc")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--merge-log", help="take the protocols not run now from the printed lines of a log")
    args = parser.parse_args()
    adata = load()
    res = {}
    if args.merge_log:
        import ast

        with open(args.merge_log) as fh:
            for line in fh:
                if line[:2] in ("a ", "b ", "c ") and line[0] not in args.protocols:
                    res[line[0]] = ast.literal_eval(line[2:].strip())
    if "c" in args.protocols:
        res["c"] = protocol_c(adata, args.c_batches)
        print("c", res["c"], flush=True)
    if "a" in args.protocols:
        res["a"] = protocol_a(adata, args.epochs)
        print("a", res["a"], flush=True)
    if "b" in args.protocols:
        res["b"] = protocol_b(adata, args.epochs)
        print("b", res["b"], flush=True)
    if not args.no_write:
        report(res, args)


def report(res: dict, args) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import machine, write_section

    lines = [
        "## BiMambaPredictor on Norman 2019 (seed 001)",
        "",
        f"Command: `python benchmarks/bimamba_norman.py --epochs {args.epochs}`. Machine: {machine()} (2-core CPU, "
        "no GPU, heavily shared while this ran). Data: the Norman part of `norman19_mcfaline23_devel.h5ad` "
        "(3,375 cells x 500 HVG, log1p); model: BiMambaPredictor(head='linear', "
        + ", ".join(f"{k}={v}" for k, v in MODEL_KW.items())
        + f"), ssm='mamba2', AdamW lr 3e-3, batches of 256 cells from 4 conditions, at most {args.epochs} epochs, "
        "early stopping on validation loss (patience 5). Gene positions from GENCODE v19, pathway features from "
        "control cells of the training split.",
        "",
    ]
    if "a" in res:
        a = res["a"]
        lines += [
            "**(a) random 80/20 cell split** (seed's protocol). Validation R² (variance-weighted over genes, "
            "validation cells x genes):",
            "",
            "| model | validation R² |",
            "|---|---|",
            f"| per-perturbation-mean oracle (training means) | {a['r2_oracle']:.4f} |",
            f"| BiMambaPredictor | {a['r2_model']:.4f} |",
            "",
            f"Ratio {a['ratio']:.3f} (target >= 0.95: {'met' if a['ratio'] >= 0.95 else 'MISSED'}); "
            f"{a['epochs']} epochs, {a['seconds'] / 60:.1f} min including pathway features.",
            "",
        ]
    if "b" in res:
        b = res["b"]
        lines += [
            f"**(b) held-out combinations** whose singles are seen ({len(b['held_out'])}: "
            f"{', '.join(b['held_out'])}). Mean `pearson_delta_de20` (top 20 genes by |true Δ|):",
            "",
            "| model | pearson_delta_de20 |",
            "|---|---|",
        ]
        for k, v in b["scores"].items():
            lines.append(f"| {k} | {'cannot predict unseen combinations' if v is None else f'{v:.4f}'} |")
        bm, add = b["scores"].get("BiMambaPredictor"), b["scores"].get("AdditiveBaseline")
        if bm is not None and add is not None:
            lines += [
                "",
                f"BiMamba vs AdditiveBaseline: {bm:.4f} vs {add:.4f} "
                f"({'met' if bm >= add else 'MISSED'}); {b['seconds'] / 60:.1f} min in all.",
                "",
            ]
    if "c" in res:
        c = res["c"]
        s = c["sec_per_batch"]
        lines += [
            f"**(c) training cost**: seconds per training batch (256 cells, forward + backward + AdamW step; mean "
            f"of {args.c_batches} batches after one warm-up batch; {c['batches_per_epoch']} batches per epoch): per-condition batching "
            f"{s['per_condition']:.2f} s, per-cell forward {s['per_cell']:.2f} s, i.e. "
            f"{c['speedup']:.1f}x (target >= 20x: {'met' if c['speedup'] >= 20 else 'MISSED'}); epoch time "
            f"estimated as batches x s/batch: {s['per_condition'] * c['batches_per_epoch']:.0f} s vs "
            f"{s['per_cell'] * c['batches_per_epoch']:.0f} s.",
        ]
    write_section("bimamba_norman", "\n".join(lines))


if __name__ == "__main__":
    main()
