"""DrugResponseTransformer on LINCS L1000 (A375, plate LJP005): forward on unseen drugs, inverse retrieval.

(a) Forward, drug-level 5-fold: train on the wells of 4/5 of the drugs (+ DMSO), predict Δ for each held-out
    (drug, dose) and score ``pearson_delta`` (Pearson over the 978 genes between predicted and measured Δ vs
    the DMSO mean) against (i) the mean-Δ baseline (mean training Δ at the same dose) and (ii) the
    nearest-Tanimoto-drug baseline (Δ of the most similar training drug at the same dose).
(b) Inverse: for each dose, the queries are the Δ at that dose and the database the Δ at the other five
    doses (the model is trained on the database only); each query ranks the drugs; relevant = its own drug.
    MRR, NDCG@10 and R@1 of the model vs sp.tl.connectivity (WTCS, best over a drug's database doses) and
    plain cosine / Pearson similarity.
(c) Check of the retrieval code on ranked signatures (Tahoe A498, sci-Plex3 A549): queries built from one half
    of each signature's top/bottom genes, scored against all full signatures with sp.tl.connectivity.

    python benchmarks/drug.py [--epochs 60] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scpredict as sp

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# small enough for a shared 2-core CPU: 978 genes in 32 tokens of ~31 genes
MODEL = {"d_model": 32, "n_heads": 2, "n_layers": 2, "n_hidden": 128, "max_gene_tokens": 32, "n_latent": 32}


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def load() -> tuple:
    adata = sp.datasets.l1000_a375(DATA)
    smiles = adata.obs["smiles"].astype(str)
    ok = (adata.obs["perturbation"] == "control") | ~smiles.isin(["None", "nan", ""])
    adata = adata[ok.to_numpy()].copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].cat.remove_unused_categories()
    adata.obs["dose"] = adata.obs["dose"].where(adata.obs["perturbation"] != "control", 0.0)
    ctrl = (adata.obs["perturbation"] == "control").to_numpy()
    ctrl_mean = adata.X[ctrl].mean(0)
    delta = adata.X - ctrl_mean
    fp = sp.pp.drug_features(
        adata.obs.loc[~ctrl].groupby("perturbation", observed=True)["smiles"].first().astype(str), n_bits=2048
    )
    return adata, ctrl, delta, fp


def make_model(adata, epochs: int, train_idx=None, seed: int = 0):
    sp.settings.seed = seed
    M = sp.models.DrugResponseTransformer
    M.setup_anndata(
        adata, perturbation_key="perturbation", control="control", smiles_key="smiles", dose_key="dose"
    )
    model = M(
        adata,
        d_model=64,
        n_heads=4,
        n_layers=2,
        n_hidden=256,
        max_gene_tokens=128,
        n_latent=64,
        dropout_rate=0.1,
    )
    model.train(
        max_epochs=epochs,
        batch_size=32,
        lr=1e-3,
        rank_weight=0.5,
        warmup_epochs=max(1, epochs // 4),
        train_indices=train_idx,
        train_size=0.9,
        early_stopping=False,
        logger=None,
        enable_checkpointing=False,
        progress_bar="none",
    )
    return model


# ----------------------------------------------------------------------------- (a) forward
def forward(adata, ctrl, delta, fp, *, epochs: int, n_folds: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    drugs = np.array(sorted(fp.index))
    rng = np.random.default_rng(0)
    folds = np.array_split(rng.permutation(drugs), n_folds)
    obs = adata.obs
    pert = obs["perturbation"].astype(str).to_numpy()
    dose = obs["dose"].to_numpy()
    sim = pd.DataFrame(sp.pp.tanimoto_similarity(fp.to_numpy()), index=fp.index, columns=fp.index)
    rows = []
    for f, test_drugs in enumerate(folds):
        t0 = time.time()
        test = np.isin(pert, test_drugs)
        train = ~test & ~ctrl
        sub = adata[~test].copy()
        sub.obs["perturbation"] = sub.obs["perturbation"].cat.remove_unused_categories()
        model = make_model(sub, epochs)
        held = adata[test].copy()
        pred = model.get_delta(held)
        applicability = model._applicability(model._features_for_rows(held))
        for i, (d, x) in enumerate(zip(pert[test], dose[test], strict=True)):
            true = delta[test][i]
            same_dose = train & np.isclose(dose, x)
            mean_pred = delta[same_dose].mean(0)
            train_drugs = np.unique(pert[train])
            nn = train_drugs[np.argmax(sim.loc[d, train_drugs].to_numpy())]
            nn_rows = train & (pert == nn) & np.isclose(dose, x)
            nn_pred = delta[nn_rows].mean(0) if nn_rows.any() else delta[train & (pert == nn)].mean(0)
            rows.append(
                {
                    "fold": f,
                    "drug": d,
                    "dose": x,
                    "nearest_drug": nn,
                    "tanimoto_nearest": float(sim.loc[d, nn]),
                    "DrugResponseTransformer": pearson_rows(pred[i : i + 1], true[None])[0],
                    "mean-Δ baseline": pearson_rows(mean_pred[None], true[None])[0],
                    "nearest-Tanimoto baseline": pearson_rows(nn_pred[None], true[None])[0],
                    "applicability": float(applicability[i]),
                }
            )
        print(f"fold {f}: {len(test_drugs)} drugs, {time.time() - t0:.0f} s", flush=True)
    res = pd.DataFrame(rows)
    models = ["DrugResponseTransformer", "mean-Δ baseline", "nearest-Tanimoto baseline"]
    summary = pd.DataFrame(
        {
            "pearson_delta (all)": res[models].mean(),
            "pearson_delta (dose ≥ 1.11 µM)": res.loc[res["dose"] >= 1.1, models].mean(),
            "per-drug mean": res.groupby("drug")[models].mean().mean(),
        }
    )
    return res, summary


# ----------------------------------------------------------------------------- (b) inverse
def inverse(adata, ctrl, delta, fp, *, epochs: int, doses=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    dose = adata.obs["dose"].to_numpy()
    genes = adata.var_names.astype(str)
    all_doses = np.unique(dose[~ctrl]) if doses is None else np.asarray(doses)
    drugs = np.array(sorted(fp.index))
    per_query = []
    for x in all_doses:
        t0 = time.time()
        q_rows = ~ctrl & np.isclose(dose, x)
        db_rows = ~ctrl & ~np.isclose(dose, x)
        queries = pd.DataFrame(delta[q_rows], index=pert[q_rows], columns=genes)
        database = pd.DataFrame(
            delta[db_rows],
            index=[f"{p}|{d:g}" for p, d in zip(pert[db_rows], dose[db_rows], strict=True)],
            columns=genes,
        )
        db_drug = pert[db_rows]
        truth = (queries.index.to_numpy()[:, None] == drugs[None]).astype(float)

        def by_drug(
            item_scores: np.ndarray, db_drug: np.ndarray = db_drug
        ) -> np.ndarray:  # best item per drug
            out = np.full((item_scores.shape[0], len(drugs)), -np.inf)
            for j, d in enumerate(drugs):
                cols = db_drug == d
                if cols.any():
                    out[:, j] = item_scores[:, cols].max(1)
            return out

        scores = {
            "connectivity (WTCS)": by_drug(sp.tl.connectivity(queries, database, n_genes=50).to_numpy()),
            "cosine similarity": by_drug(
                (queries.to_numpy() / np.linalg.norm(queries.to_numpy(), axis=1, keepdims=True))
                @ (database.to_numpy() / np.linalg.norm(database.to_numpy(), axis=1, keepdims=True)).T
            ),
            "Pearson similarity": by_drug(
                np.corrcoef(np.vstack([queries.to_numpy(), database.to_numpy()]))[
                    : len(queries), len(queries) :
                ]
            ),
        }
        keep = ctrl | db_rows
        sub = adata[keep].copy()
        sub.obs["perturbation"] = sub.obs["perturbation"].cat.remove_unused_categories()
        model = make_model(sub, epochs)
        for method in ("embedding", "profile", "combined"):
            s = model.get_drug_scores(queries, method=method)
            scores[f"DrugResponseTransformer ({method})"] = s.reindex(columns=drugs).to_numpy()
        for name, sc in scores.items():
            sc = np.where(np.isfinite(sc), sc, -1e9)
            per_query.append(
                pd.DataFrame(
                    {
                        "method": name,
                        "dose": x,
                        "drug": queries.index,
                        "rr": sp.metrics.mrr(truth, sc, reduction="none"),
                        "ndcg@10": sp.metrics.ndcg_at_k(truth, sc, k=10, reduction="none"),
                        "r@1": sp.metrics.recall_at_k(truth, sc, k=1, reduction="none"),
                        "r@10": sp.metrics.recall_at_k(truth, sc, k=10, reduction="none"),
                    }
                )
            )
        print(f"dose {x:g}: {time.time() - t0:.0f} s", flush=True)
    res = pd.concat(per_query, ignore_index=True)
    summary = (
        res.groupby("method", sort=False)[["rr", "ndcg@10", "r@1", "r@10"]]
        .mean()
        .rename(columns={"rr": "MRR"})
    )
    return res, summary


# ----------------------------------------------------------------------------- (c) ranked signatures
def ranked_check(which: str, n_tags: int = 50) -> dict:
    long = sp.datasets.ranked_signatures(DATA, which=which)
    sigs = {}
    for d, g in long.groupby("drug"):
        g = g.sort_values("rank")
        n = len(g)
        sigs[d] = pd.Series(1.0 - 2.0 * np.arange(n) / max(n - 1, 1), index=g["gene"].astype(str).to_numpy())
    sigs = {d: s[~s.index.duplicated()] for d, s in sigs.items()}
    ref = pd.DataFrame(sigs).T.fillna(0.0)  # genes absent from a drug's list sit in the middle
    names = ref.index.to_numpy()
    tags = []
    for d in names:
        s = sigs[d]
        up = s.index[: 2 * n_tags : 2].tolist()  # every other gene of the top: one half
        down = s.index[::-1][: 2 * n_tags : 2].tolist()
        tags.append((up, down))
    Q = sp.tl.connectivity([{"up": u, "down": d} for u, d in tags], ref).to_numpy()
    R = sp.tl.connectivity([{"up": d, "down": u} for u, d in tags], ref).to_numpy()
    truth = np.eye(len(names))
    off = ~np.eye(len(names), dtype=bool)
    return {
        "dataset": which,
        "drugs": len(names),
        "genes": ref.shape[1],
        "MRR self": sp.metrics.mrr(truth, Q),
        "R@1 self": sp.metrics.recall_at_k(truth, Q, k=1),
        "mean WTCS self": float(np.diag(Q).mean()),
        "mean WTCS other": float(Q[off].mean()),
        "reversed query: MRR self (lowest first)": sp.metrics.mrr(truth, -R),
        "mean WTCS self, reversed": float(np.diag(R).mean()),
    }


def fmt(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| | " + " | ".join(map(str, cols)) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in df.iterrows():
        lines.append(
            f"| {idx} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="2 folds' worth of epochs, 2 doses (smoke run)")
    ap.add_argument("--inverse-doses", default="", help="comma-separated query doses (default: all six)")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import machine, write_section

    sp.settings.progress_bar = "none"
    import torch

    torch.set_num_threads(1)  # the CPU is shared; more threads only add contention
    t0 = time.time()
    checks = pd.DataFrame([ranked_check("tahoe_a498"), ranked_check("sciplex3_a549")]).set_index("dataset")
    print(checks.T, flush=True)
    adata, ctrl, delta, fp = load()
    epochs = 3 if args.quick else args.epochs
    inv_doses = [float(d) for d in args.inverse_doses.split(",")] if args.inverse_doses else None
    inv, inv_sum = inverse(adata, ctrl, delta, fp, epochs=epochs, doses=[10.0] if args.quick else inv_doses)
    print(inv_sum, flush=True)
    fwd, fwd_sum = forward(adata, ctrl, delta, fp, epochs=epochs, n_folds=5)
    print(fwd_sum, flush=True)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    fwd.to_csv(out / "drug_forward.csv", index=False)
    inv.to_csv(out / "drug_inverse.csv", index=False)
    minutes = (time.time() - t0) / 60
    best_base_a = max(
        fwd_sum.loc["mean-Δ baseline", "pearson_delta (all)"],
        fwd_sum.loc["nearest-Tanimoto baseline", "pearson_delta (all)"],
    )
    a_met = fwd_sum.loc["DrugResponseTransformer", "pearson_delta (all)"] > best_base_a
    model_rows = [m for m in inv_sum.index if m.startswith("DrugResponseTransformer")]
    best_model = inv_sum.loc[model_rows, "MRR"].idxmax()
    b_met = (
        inv_sum.loc[best_model, "MRR"] > inv_sum.loc["connectivity (WTCS)", "MRR"]
        and inv_sum.loc[best_model, "ndcg@10"] > inv_sum.loc["connectivity (WTCS)", "ndcg@10"]
    )
    md = f"""## Drug response and retrieval (LINCS L1000 A375, plate LJP005)

Data: `../shared/data/l1000_a375_ljp005.h5ad`, the {len(fp)} compounds with a SMILES (of 59) x 6 doses
(0.04-10 µM, one well each) and 26 DMSO wells; Δ = well − mean of the DMSO wells (log2, 978 landmark genes).
Model: `sp.models.DrugResponseTransformer` (d_model 32, 2 layers, 2 heads, the 978 genes in 32 tokens — kept
small for the shared 2-core CPU —, Morgan 2048-bit drug token + dose, InfoNCE weight 0.5 warmed up over
{max(1, epochs // 4)} epochs), {epochs} epochs, batch 32, no early stopping, seed 0.

### (a) Forward on unseen drugs (drug-level 5-fold, {len(fwd)} held-out (drug, dose) wells)

`pearson_delta` = Pearson over genes between predicted and measured Δ, mean over held-out wells.

{fmt(fwd_sum)}

Goal "beat both baselines": **{"met" if a_met else "missed"}**. Per-well numbers: `benchmarks/results/drug_forward.csv`.

### (b) Inverse: queries at one dose vs a database of the other five doses ({len(inv) // len(inv_sum)} queries; query doses {", ".join(f"{d:g}" for d in sorted(inv["dose"].unique()))} µM)

Each query ranks the {len(fp)} drugs; a drug's score from the baselines is its best database well. The model is
trained on the database wells only (one model per query dose). `embedding`: InfoNCE response-drug cosine;
`profile`: best Pearson between the query and the drug's predicted Δ over the training doses; `combined`: mean.

{fmt(inv_sum)}

Goal "beat `sp.tl.connectivity` in MRR and NDCG@10": **{"met" if b_met else "missed"}** (best model variant:
{best_model}).

### (c) Retrieval-code check on ranked signatures

Query = every other gene of each signature's top 100 and bottom 100 (50 up + 50 down tags); database = all
full ranked signatures (value 1 − 2·rank/(n−1), genes missing from a list at 0); `sp.tl.connectivity`, WTCS.

{fmt(checks.T)}

Command: `python benchmarks/drug.py --epochs {epochs}{" --inverse-doses " + args.inverse_doses if args.inverse_doses else ""}` ({minutes:.0f} min). Machine: {machine()}; shared with
other jobs while it ran.
"""
    if not args.no_report:
        write_section("drug_response", md)
    print(md)


if __name__ == "__main__":
    main()
