"""ScoreDiffusion benchmark (issue 6): generation, held-out perturbation, denoising, design, speed.

Run: ``python benchmarks/diffusion.py [--epochs N] [--parts abcde]`` (writes the ``diffusion`` section of
docs/benchmarks.md and ``benchmarks/_work/diffusion_results.json``). Data: ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import scpredict as sp

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
WORK = HERE / "_work" / "diffusion"
#: model size chosen so that each part runs in minutes on the shared 2-core CPU
MODEL = {"space": "latent", "n_latent": 32, "ae_hidden": 256, "n_hidden": 256, "n_layers": 3, "n_emb": 64}
HELD_OUT = ("CD4T", "stimulated")
DESIGN = {
    "IL2RA": "up", "ISG15": "up", "CXCL10": "up", "IFIT3": "up", "GNLY": "up",
    "PDCD1": "down", "TCF7": "down", "CCR7": "down", "LTB": "down", "SELL": "down",
}  # fmt: skip


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def kang(n_hvg: int = 2000):
    import scanpy as sc

    a = sc.read_h5ad(DATA / "kang18_ifnb_pbmc_valid.h5ad")
    a.obsp.clear()
    a.uns.clear()
    sc.pp.highly_variable_genes(a, n_top_genes=n_hvg)
    order = a.var["dispersions_norm"].fillna(-np.inf).sort_values(ascending=False).index
    forced = [g for g in DESIGN if g in a.var_names]
    genes = forced + [g for g in order if g not in forced][: n_hvg - len(forced)]
    a = a[:, genes].copy()
    a.X = np.asarray(a.X.toarray(), dtype=np.float32)
    a.obs["group"] = a.obs["cell_type"].astype(str) + "|" + a.obs["condition"].astype(str)
    rng = np.random.default_rng(0)
    held = (a.obs["cell_type"] == HELD_OUT[0]).to_numpy() & (a.obs["condition"] == HELD_OUT[1]).to_numpy()
    split = np.where(held, "held_out", "train")
    for g in np.unique(a.obs["group"][~held]):
        idx = np.flatnonzero((a.obs["group"] == g).to_numpy())
        test = rng.choice(idx, int(round(0.2 * len(idx))), replace=False)
        split[test] = "test"
    a.obs["split"] = split
    return a


def train_kang(a, epochs: int):
    path = WORK / f"kang_model_e{epochs}"
    tr = a[a.obs["split"] == "train"].copy()
    sp.models.ScoreDiffusion.setup_anndata(
        tr, condition_keys=["cell_type", "condition"], perturbation_key="condition", control="control"
    )
    if (path / "model.json").exists():
        return sp.models.ScoreDiffusion.load(path, adata=tr), tr, json.loads((path / "time.json").read_text())
    model = sp.models.ScoreDiffusion(tr, **MODEL)
    t0 = time.time()
    model.train(
        max_epochs=epochs,
        ae_epochs=epochs // 3,
        batch_size=128,
        lr=1e-3,
        train_size=1.0,
        logger=None,
        enable_checkpointing=False,
    )
    info = {"train_s": time.time() - t0, "epochs": epochs, "n_train": tr.n_obs}
    model.save(path, overwrite=True)
    (path / "time.json").write_text(json.dumps(info))
    return model, tr, info


def part_a(a, model, tr):
    test = a[a.obs["split"] == "test"]
    rows, gen_all, real_all, gauss_all, train_all = [], [], [], [], []
    rng = np.random.default_rng(1)
    for g in sorted(test.obs["group"].unique()):
        ct, cond = g.split("|")
        real = np.asarray(test[test.obs["group"] == g].X)
        trx = np.asarray(tr[tr.obs["group"] == g].X)
        n = max(len(real), 50)
        gen = model.generate(n, conditions={"cell_type": ct, "condition": cond}, seed=len(rows)).X
        gauss = trx.mean(0) + trx.std(0) * rng.standard_normal((n, trx.shape[1]))
        gauss = np.maximum(gauss, 0)
        rows.append({
            "group": g, "n_test": len(real),
            "pearson_means_model": sp.metrics.pearson_of_means(real, gen),
            "pearson_means_gaussian": sp.metrics.pearson_of_means(real, gauss),
            "pearson_means_train_cells": sp.metrics.pearson_of_means(real, trx),
        })  # fmt: skip
        gen_all.append(gen[: len(real)])
        gauss_all.append(gauss[: len(real)])
        train_all.append(trx[rng.choice(len(trx), min(len(real), len(trx)), replace=False)])
        real_all.append(real)
    real_all = np.vstack(real_all)
    pooled = {
        "knn_model": sp.metrics.knn_real_vs_generated(real_all, np.vstack(gen_all)),
        "knn_gaussian": sp.metrics.knn_real_vs_generated(real_all, np.vstack(gauss_all)),
        "knn_train_cells": sp.metrics.knn_real_vs_generated(real_all, np.vstack(train_all)),
    }
    pcs = _pca(real_all)
    pooled["energy_model"] = sp.metrics.energy_distance(pcs(real_all), pcs(np.vstack(gen_all)))
    pooled["energy_gaussian"] = sp.metrics.energy_distance(pcs(real_all), pcs(np.vstack(gauss_all)))
    pooled["energy_train_cells"] = sp.metrics.energy_distance(pcs(real_all), pcs(np.vstack(train_all)))
    pooled["mmd_model"] = sp.metrics.mmd(pcs(real_all), pcs(np.vstack(gen_all)))
    pooled["mmd_gaussian"] = sp.metrics.mmd(pcs(real_all), pcs(np.vstack(gauss_all)))
    pooled["mmd_train_cells"] = sp.metrics.mmd(pcs(real_all), pcs(np.vstack(train_all)))
    # per-group kNN accuracy where the group has enough test cells
    big = [r for r in rows if r["n_test"] >= 30]
    for r in rows:
        r["knn_model"] = np.nan
    for r, real, gen in zip(rows, real_all_split(real_all, rows), gen_all, strict=True):
        if r["n_test"] >= 30:
            r["knn_model"] = sp.metrics.knn_real_vs_generated(real, gen)
    return pd.DataFrame(rows), pooled, len(big)


def real_all_split(real_all, rows):
    out, s = [], 0
    for r in rows:
        out.append(real_all[s : s + r["n_test"]])
        s += r["n_test"]
    return out


def _pca(ref, n=30):
    mean = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    return lambda x: (x - mean) @ vt[:n].T


def part_b(a, model):
    def dense(x):
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x)

    obs = a.obs
    ctrl = a[
        (obs["cell_type"] == "CD4T").to_numpy()
        & (obs["condition"] == "control").to_numpy()
        & (obs["split"] == "train").to_numpy()
    ]
    stim = a[obs["split"] == "held_out"]
    truth, ctrl_mean = dense(stim.X).mean(0), dense(ctrl.X).mean(0)
    de = sp.metrics.wilcoxon_de(dense(stim.X), dense(ctrl.X))
    top = np.lexsort((-np.abs(de.log2fc), de.pvalue))[:100]
    others = a[(obs["cell_type"] != "CD4T").to_numpy() & (obs["split"] == "train").to_numpy()]
    deltas = []
    for ct in sorted(others.obs["cell_type"].unique()):
        o = others[others.obs["cell_type"] == ct]
        s, c = dense(o[o.obs["condition"] == "stimulated"].X), dense(o[o.obs["condition"] == "control"].X)
        deltas.append(s.mean(0) - c.mean(0))
    preds = {"no-change (control CD4T)": ctrl_mean, "vector arithmetic": ctrl_mean + np.mean(deltas, axis=0)}
    timings = {}
    for label, kw in {
        "ScoreDiffusion (inversion, strength 1.0)": {"strength": 1.0},
        "ScoreDiffusion (inversion, strength 0.6)": {"strength": 0.6},
        "ScoreDiffusion (inversion, strength 1.0, guidance 2)": {"strength": 1.0, "guidance_scale": 2.0},
    }.items():
        t0 = time.time()
        preds[label] = model.get_perturbation(ctrl, target={"condition": "stimulated"}, **kw).mean(0)
        timings[label] = time.time() - t0
    prof = model.get_perturbation_profiles(["stimulated"], covariates={"cell_type": "CD4T"}).X[0]
    preds["ScoreDiffusion (get_perturbation_profiles)"] = prof
    rows = []
    for label, p in preds.items():
        rows.append({
            "method": label,
            "R2 scGen (top100)": sp.metrics.r2_scgen(p[top], truth[top]),
            "R2 CPA (top100)": sp.metrics.r2_mean(p[top], truth[top]),
            "R2 scGen (all genes)": sp.metrics.r2_scgen(p, truth),
            "R2 CPA (all genes)": sp.metrics.r2_mean(p, truth),
        })  # fmt: skip
    return pd.DataFrame(rows), timings


def part_c(epochs: int):
    import anndata as ad
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    raw = ad.read_h5ad(DATA / "cellbench_lung5cl_celseq2_dropseq.h5ad")
    raw = raw[raw.obs["demuxlet_cls"] == "SNG"].copy()
    counts = raw.X.toarray() if hasattr(raw.X, "toarray") else np.asarray(raw.X)
    counts = counts.astype(np.int64)
    rng = np.random.default_rng(0)
    thin = rng.binomial(counts, 0.2)
    keep = (thin > 0).sum(0) >= 10
    counts, thin = counts[:, keep], thin[:, keep]

    def lognorm(c):
        lib = c.sum(1, keepdims=True).astype(np.float64)
        return np.log1p(c / np.maximum(lib, 1) * 1e4).astype(np.float32)

    a = ad.AnnData(lognorm(thin), obs=raw.obs[["cell_line", "protocol"]].astype(str).copy())
    a.var_names = raw.var_names[keep]
    sc.pp.highly_variable_genes(a, n_top_genes=2000)
    hv = a.var["highly_variable"].to_numpy()
    a = a[:, hv].copy()
    truth = lognorm(counts)[:, hv]
    split = rng.random(a.n_obs) < 0.8
    tr, te = a[split].copy(), a[~split].copy()
    path = WORK / f"cellbench_model_e{epochs}"
    sp.models.ScoreDiffusion.setup_anndata(tr, condition_keys=["protocol"])
    if (path / "model.json").exists():
        model = sp.models.ScoreDiffusion.load(path, adata=tr)
    else:
        model = sp.models.ScoreDiffusion(tr, **MODEL)
        model.train(
            max_epochs=epochs,
            ae_epochs=epochs // 3,
            batch_size=128,
            train_size=1.0,
            logger=None,
            enable_checkpointing=False,
        )
        model.save(path, overwrite=True)
    t_truth = truth[~split]

    def corr(x):
        x = x - x.mean(1, keepdims=True)
        y = t_truth - t_truth.mean(1, keepdims=True)
        return float(np.mean((x * y).sum(1) / np.sqrt((x**2).sum(1) * (y**2).sum(1))))

    rows = [{"method": "thinned input (20%)", "mean per-cell Pearson with full depth": corr(te.X)}]
    pcs = _pca(np.asarray(a.X))
    nn = NearestNeighbors(n_neighbors=15).fit(pcs(np.asarray(a.X)))
    _, idx = nn.kneighbors(pcs(np.asarray(te.X)))
    rows.append(
        {
            "method": "kNN smoothing (k=15, PCA 30)",
            "mean per-cell Pearson with full depth": corr(np.asarray(a.X)[idx].mean(1)),
        }
    )
    for t_start in (0.2, 0.4, 0.6):
        x = model.get_denoised(te, t_start=t_start, n_samples=5, n_steps=50)
        rows.append(
            {
                "method": f"ScoreDiffusion denoise (t_start={t_start}, 5 samples)",
                "mean per-cell Pearson with full depth": corr(x),
            }
        )
    return pd.DataFrame(rows), {"n_train": int(split.sum()), "n_test": int((~split).sum())}


def part_d(a, model, tr):
    ctrl = tr[(tr.obs["cell_type"] == "CD4T").to_numpy() & (tr.obs["condition"] == "control").to_numpy()]
    src = np.asarray(ctrl.X)
    target = {g: d for g, d in DESIGN.items() if g in model.var_names_}
    gi = [model.var_names_.index(g) for g in target]
    sign = np.array([1 if d == "up" else -1 for d in target.values()])
    rows = []
    for scale in (0.0, 1.0, 3.0, 10.0):
        d = model.design(
            target, n=200, guidance_scale=scale, conditions={"cell_type": "CD4T", "condition": "control"}
        )
        moved = np.sign(d.X[:, gi].mean(0) - src[:, gi].mean(0)) == sign
        rows.append({
            "guidance_scale": scale, "mean target_match": float(d.obs["target_match"].mean()),
            "genes moved as requested": f"{int(moved.sum())}/{len(gi)}",
            "fraction moved": float(moved.mean()),
            "kNN real-vs-designed acc.": sp.metrics.knn_real_vs_generated(src, d.X),
        })  # fmt: skip
    return pd.DataFrame(rows), target


def part_e(model):
    out = {}
    for label, kw in {
        "DDIM-50, guidance 1": {},
        "DDIM-50, guidance 2 (CFG, 2 passes)": {"guidance_scale": 2.0},
    }.items():
        t0 = time.time()
        model.generate(1000, conditions={"cell_type": "CD4T", "condition": "control"}, n_steps=50, **kw)
        out[label] = 1000 / (time.time() - t0)
    return out


def fmt(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--parts", default="abcde")
    ap.add_argument("--c-epochs", type=int, default=150, help="epochs of the CellBench denoising model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on the shared CPU)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    res_path = WORK / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    sp.settings.progress_bar = "none"
    a = kang()
    if set(args.parts) & set("abde"):
        log("training Kang model")
        model, tr, info = train_kang(a, args.epochs)
        results["kang_train"] = info
        log("trained", info)
    if "a" in args.parts:
        df, pooled, n_big = part_a(a, model, tr)
        results["a"] = {"table": df.to_dict("records"), "pooled": pooled, "n_big": n_big}
        log("a", pooled)
    if "b" in args.parts:
        df, timings = part_b(a, model)
        results["b"] = {"table": df.to_dict("records"), "timings": timings}
        log("b\n", df)
    if "c" in args.parts:
        df, info = part_c(args.c_epochs)
        results["c"] = {"table": df.to_dict("records"), "info": info}
        log("c\n", df)
    if "d" in args.parts:
        df, target = part_d(a, model, tr)
        results["d"] = {"table": df.to_dict("records"), "target": target}
        log("d\n", df)
    if "e" in args.parts:
        results["e"] = part_e(model)
        log("e", results["e"])
    res_path.write_text(json.dumps(results, indent=1, default=float))
    report(results, args)


def report(results, args):
    from _report import machine, write_section

    lines = [
        "## ScoreDiffusion (scIDiff, issue 6)",
        "",
        f"Command: `python benchmarks/diffusion.py --epochs {args.epochs} --c-epochs {args.c_epochs}` — {machine()}. Kang 2018 PBMC "
        "(`kang18_ifnb_pbmc_valid.h5ad`, 2,000 HVGs incl. the design genes); cells of each (cell_type, condition) "
        "split 80/20 train/test, stimulated CD4T held out of training entirely. Model: expression space, "
        "latent space (autoencoder 2,000→256→32 trained first, as in scDiffusion), residual MLP score network 256×3, cosine "
        "schedule T=1000, DDIM-50 sampling, guidance scale 1 unless stated.",
    ]
    if "kang_train" in results:
        t = results["kang_train"]
        lines += ["", f"Training: {t['n_train']} cells, {t['epochs']} epochs, {t['train_s'] / 60:.1f} min."]
    if "a" in results:
        p = results["a"]["pooled"]
        df = pd.DataFrame(results["a"]["table"])
        lines += [
            "", "### (a) Conditional generation vs held-out test cells",
            "", "Pooled over the 13 training groups (generated cells matched in number to the test cells of each group). "
            "Baselines: a per-gene Gaussian fitted on the group's training cells, and the training cells themselves "
            "(the best any generator can do).", "",
            fmt(pd.DataFrame([
                {"generator": "ScoreDiffusion", "kNN real-vs-generated acc.": p["knn_model"], "energy distance (PCA 30)": p["energy_model"], "MMD (PCA 30)": p["mmd_model"], "median Pearson of group means": df["pearson_means_model"].median(), "min Pearson of group means": df["pearson_means_model"].min()},
                {"generator": "per-gene Gaussian", "kNN real-vs-generated acc.": p["knn_gaussian"], "energy distance (PCA 30)": p["energy_gaussian"], "MMD (PCA 30)": p["mmd_gaussian"], "median Pearson of group means": df["pearson_means_gaussian"].median(), "min Pearson of group means": df["pearson_means_gaussian"].min()},
                {"generator": "training cells", "kNN real-vs-generated acc.": p["knn_train_cells"], "energy distance (PCA 30)": p["energy_train_cells"], "MMD (PCA 30)": p["mmd_train_cells"], "median Pearson of group means": df["pearson_means_train_cells"].median(), "min Pearson of group means": df["pearson_means_train_cells"].min()},
            ])),
            "", "Per group (kNN accuracy only where the group has ≥ 30 test cells):", "", fmt(df),
            "", f"Targets: kNN accuracy ≤ 0.65 — {'met' if p['knn_model'] <= 0.65 else 'missed'} (pooled {p['knn_model']:.3f}); "
            f"Pearson of group means ≥ 0.95 — {'met' if df['pearson_means_model'].min() >= 0.95 else 'missed (not every group)'}: "
            f"{int((df['pearson_means_model'] >= 0.95).sum())} of {len(df)} groups reach it "
            f"(median {df['pearson_means_model'].median():.3f}, min {df['pearson_means_model'].min():.3f}; the training cells themselves reach min "
            f"{df['pearson_means_train_cells'].min():.3f}, as the small test groups are noisy).",
        ]  # fmt: skip
    if "b" in results:
        df = pd.DataFrame(results["b"]["table"])
        lines += [
            "", "### (b) Held-out stimulated CD4T (R² of mean expression)",
            "", "Top-100 DEGs: Wilcoxon, real stimulated vs control CD4T. Vector arithmetic: control CD4T mean + mean of the "
            "per-cell-type stimulated−control shifts of the other six types. The model translates the training control CD4T "
            "cells (DDIM inversion under their own condition, regeneration as stimulated).", "", fmt(df),
        ]  # fmt: skip
        best = df.iloc[:2]
        model_rows = df.iloc[2:]
        for col in ("R2 scGen (top100)", "R2 CPA (top100)"):
            ok = model_rows[col].max() >= best[col].max()
            lines.append(
                f"- {col}: best model {model_rows[col].max():.3f} vs best baseline {best[col].max():.3f} — {'met' if ok else 'missed'}."
            )
    if "c" in results:
        df = pd.DataFrame(results["c"]["table"])
        i = results["c"]["info"]
        lines += [
            "", "### (c) Denoising (CellBench, counts thinned binomially to 20%)",
            "", f"`cellbench_lung5cl_celseq2_dropseq.h5ad`, singlets; model trained on the thinned, log-normalized data of "
            f"{i['n_train']} cells (2,000 HVGs of the thinned data, condition: protocol), scored on {i['n_test']} held-out cells "
            "against their full-depth log-normalized profiles. kNN smoothing averages each test cell with its 15 nearest "
            "thinned cells (all cells).", "", fmt(df),
        ]  # fmt: skip
    if "d" in results:
        df = pd.DataFrame(results["d"]["table"])
        lines += [
            "", "### (d) Inverse design",
            "", f"Target `{results['d']['target']}`; 200 cells designed under (CD4T, control); genes compared with the real "
            "control CD4T training cells (the source), kNN accuracy against the same cells. target_match: mean signed shift "
            "of the requested genes in source standard deviations.", "", fmt(df),
        ]  # fmt: skip
    if "e" in results:
        lines += ["", "### (e) Sampling speed", ""]
        lines += [
            f"- {k}: {v:.0f} cells/s (2,000 genes, this CPU, 1 torch thread)" for k, v in results["e"].items()
        ]
    write_section("diffusion", "\n".join(lines))


if __name__ == "__main__":
    main()
