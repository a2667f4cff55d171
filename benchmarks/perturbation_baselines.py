"""The four perturbation baselines on the Norman 2019 part of the PerturBench devel subset.

Two held-out settings:

- combinations: every double perturbation whose two singles are measured (5 of the 15) is held out at once
  (``sp.pp.split_combinations(test_fraction=1.0)``); every single stays in training;
- singles: 30% of the single perturbations are held out (``sp.pp.split_perturbations(singles_only=True)``);
  training combinations that contain a held-out target are removed from training as well; three random
  splits (seeds 0, 1, 2).

Every model is scored by ``sp.tl.benchmark_perturbation_models`` on the held-out perturbations (reference:
all control cells, which the models also see in training). The explicit perturbation lists of
each split are written to ``benchmarks/results/perturbation_baselines/<setting>_seed<k>/split.json``.

Usage::

    python benchmarks/perturbation_baselines.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import scpredict as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
OUT = Path(__file__).resolve().parent / "results" / "perturbation_baselines"
METRICS = [
    "mse",
    "mae",
    "pearson_delta",
    "pearson_delta_de20",
    "r2_mean_de",
    "direction_de20",
    "l2_top1000",
    "des",
    "pds",
]
MODELS = {
    "control": sp.models.ControlBaseline,
    "mean": sp.models.MeanBaseline,
    "additive": sp.models.AdditiveBaseline,
    "linear": (sp.models.LinearBaseline, {"n_components": 10, "ridge_lambda": 0.1}),
}


def load_norman() -> ad.AnnData:
    adata = ad.read_h5ad(DATA)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.obs = adata.obs[["perturbation"]].astype(str)
    return adata


def split(adata: ad.AnnData, setting: str, seed: int) -> None:
    if setting == "combinations":
        sp.pp.split_combinations(adata, test_fraction=1.0, seed=seed)
        return
    sp.pp.split_perturbations(adata, singles_only=True, test_fraction=0.3, val_fraction=0.0, seed=seed)
    test = set(adata.uns["split"]["test"])
    labels = adata.obs["perturbation"].astype(str)
    leak = labels.map(lambda p: p not in test and bool(set(p.split("+")) & test)).to_numpy()
    s = adata.obs["split"].astype(str).to_numpy()
    s[leak] = "unused"
    adata.obs["split"] = pd.Categorical(s)
    adata.uns["split"]["train"] = sorted(set(labels[s == "train"]) - {"control"})
    adata.uns["split"]["unused"] = sorted(set(labels[leak]))


def main() -> None:
    adata = load_norman()
    rows = []
    t0 = time.time()
    for setting, seeds in (("combinations", (0,)), ("singles", (0, 1, 2))):
        for seed in seeds:
            a = adata.copy()
            split(a, setting, seed)
            res = sp.tl.benchmark_perturbation_models(
                a,
                MODELS,
                split_key="split",
                perturbation_key="perturbation",
                metrics=METRICS + ["vcc_score"],
                scale="log1p",
                save_dir=OUT / f"{setting}_seed{seed}",
            )
            agg = res.groupby(["model", "metric"])["value"].mean().unstack()
            for model in MODELS:
                row = {"setting": setting, "seed": seed, "model": model}
                row.update(agg.loc[model, METRICS].to_dict())
                row["vcc_score"] = res.attrs["vcc_score"].get(model, np.nan)
                row["n_test"] = len(res.attrs["split"]["test"])
                row["n_predicted"] = len(res.attrs["split"]["test"]) - len(res.attrs["unsupported"][model])
                rows.append(row)
            print(setting, seed, f"{time.time() - t0:.0f}s", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(OUT / "summary.csv", index=False)
    cols = METRICS + ["vcc_score"]
    summary = table.groupby(["setting", "model"], sort=False)[cols].agg(["mean", "std"])
    counts = table.groupby(["setting", "model"], sort=False)[["n_predicted", "n_test"]].first()
    fmt = pd.DataFrame(index=summary.index)
    for c in cols:
        cells = []
        for key, m, s in zip(summary.index, summary[(c, "mean")], summary[(c, "std")], strict=True):
            if np.isnan(m):
                cells.append("n/a" if counts.loc[key, "n_predicted"] == 0 else "undefined")
            else:
                cells.append(f"{m:.3g}" if np.isnan(s) else f"{m:.3g} ± {s:.2g}")
        fmt[c] = cells
    fmt["predicted / held out"] = [f"{int(a)} / {int(b)}" for a, b in counts.itertuples(index=False)]
    print(fmt.to_string())
    md = (
        "## Perturbation baselines (Norman 2019, held-out perturbations)\n\n"
        f"Norman 2019 K562 CRISPRa part of `norman19_mcfaline23_devel.h5ad` ({adata.n_obs} cells, 500 HVG, "
        "18 singles, 15 combinations; log1p X). Settings: **combinations** = the 5 combinations whose two singles "
        "are measured, all held out, every single in training (`sp.pp.split_combinations(test_fraction=1.0)`); "
        "**singles** = 30% of the singles held out (5), training combinations containing a held-out target "
        "removed, mean ± sd over 3 random splits (seeds 0-2). Values are per-perturbation means over the held-out "
        "perturbations (reference: all control cells, which every model also sees in training); metrics from `sp.tl.benchmark_perturbation_models` "
        "(DE genes: scanpy t-test vs control, |score|; `vcc_score` is the aggregate score scaled against the "
        "mean-of-perturbation-means of the held-out truth). `n/a`: the model cannot predict an unseen single "
        "(additive; linear with its training-derived perturbation embedding, since the targets are not among "
        "the 500 genes; pass `perturbation_embedding=<DataFrame>` for external embeddings). `undefined`: Pearson "
        "of a Δ that is 0 (the control baseline predicts the control mean). `des` is 0 for every "
        "baseline: a profile repeated to the real cell count (as cell-eval's own baseline is built) makes the "
        "Mann-Whitney test flag genes whose control cells are all zero, at |log2FC| = inf, ahead of the few "
        "(about 2 per perturbation at 100 cells) truly significant genes; `des` needs predicted cells, not "
        "means. `pds` ranks among the held-out perturbations only (5 here). Split lists: "
        "`benchmarks/results/perturbation_baselines/*/split.json`.\n\n"
        "Command: `python benchmarks/perturbation_baselines.py` · Machine: "
        + machine()
        + f" · {time.time() - t0:.0f} s\n\n"
        + fmt.reset_index().to_markdown(index=False)
        + "\n"
    )
    write_section("perturbation_baselines", md)


if __name__ == "__main__":
    main()
