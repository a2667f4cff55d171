"""Do our ``mae``, ``pds`` and ``des`` equal cell-eval's? (Norman 2019 part of the PerturBench devel subset.)

Two settings, each scored by ``sp.tl.evaluate_perturbations`` and by PyPI ``cell-eval`` (run in its own Python
environment through a subprocess, on the files written by ``sp.tl.to_cell_eval``):

(a) oracle: every perturbation's cells (control included) split at random into two halves; one half is the
    truth, the other the "prediction";
(b) control baseline: ``sp.models.ControlBaseline`` trained on all cells predicts every perturbation.

Targets: |Δmae| ≤ 1e-6, |Δpds| ≤ 1e-3, |Δdes| ≤ 1e-3 for every perturbation.

Usage::

    python benchmarks/celleval_agreement.py [--cell-eval-python /work/celleval_env/bin/python]

The cell-eval environment: ``python -m venv /work/celleval_env && /work/celleval_env/bin/pip install cell-eval``
(kept apart so that it cannot change this project's torch).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import scpredict as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, write_section  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "norman19_mcfaline23_devel.h5ad"
TARGETS = {"mae": 1e-6, "pds": 1e-3, "des": 1e-3}
CE_COLS = {"mae": "mae", "pds": "discrimination_score_l1", "des": "overlap_at_N"}

RUN_CELL_EVAL = """
import sys
from cell_eval import MetricsEvaluator
real, pred, out = sys.argv[1:4]
ev = MetricsEvaluator(adata_pred=pred, adata_real=real, control_pert="control", pert_col="perturbation",
                      num_threads=2, outdir=out)
ev.compute(profile="vcc", write_csv=True)
"""


def load_norman() -> ad.AnnData:
    adata = ad.read_h5ad(DATA)
    adata = adata[adata.obs["dataset"] == "norman19"].copy()
    adata.X = adata.X.toarray()
    adata.obs = adata.obs[["perturbation"]].astype(str)
    return adata


def oracle_halves(adata: ad.AnnData, seed: int = 0) -> tuple[ad.AnnData, ad.AnnData]:
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _, idx in adata.obs.groupby("perturbation").indices.items():
        perm = rng.permutation(idx)
        h = len(perm) // 2
        a.append(perm[:h])
        b.append(perm[h : 2 * h])
    return adata[np.concatenate(a)].copy(), adata[np.concatenate(b)].copy()


def run_cell_eval(python: str, files: dict, out: Path) -> pd.DataFrame:
    subprocess.run(
        [python, "-c", RUN_CELL_EVAL, str(files["real"]), str(files["pred"]), str(out)],
        check=True,
        capture_output=True,
    )
    return pd.read_csv(out / "results.csv").set_index("perturbation")


def compare(name: str, truth: ad.AnnData, predicted: ad.AnnData, python: str, work: Path) -> list[dict]:
    t0 = time.time()
    ours = sp.tl.evaluate_perturbations(
        truth, predicted, perturbation_key="perturbation", metrics=["mae", "pds", "des"], scale="log1p"
    )
    t_ours = time.time() - t0
    files = sp.tl.to_cell_eval(
        truth,
        predicted,
        directory=work / name,
        perturbation_key="perturbation",
        pert_col="perturbation",
        scale="log1p",
        overwrite=True,
    )
    t0 = time.time()
    ce = run_cell_eval(python, files, work / name / "out")
    t_ce = time.time() - t0
    ce = ce.loc[ours.index]
    rows = []
    for m, tol in TARGETS.items():
        diff = np.abs(ours[m].to_numpy() - ce[CE_COLS[m]].to_numpy())
        rows.append(
            {
                "setting": name,
                "metric": m,
                "ours (mean)": ours[m].mean(),
                "cell-eval (mean)": ce[CE_COLS[m]].mean(),
                "max abs diff": diff.max(),
                "target": tol,
                "met": bool(diff.max() <= tol),
                "n_perturbations": len(diff),
                "seconds ours / cell-eval": f"{t_ours:.1f} / {t_ce:.1f}",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell-eval-python", default="/work/celleval_env/bin/python")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    adata = load_norman()
    adata.uns["log1p"] = {"base": None}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        real, pred = oracle_halves(adata)
        rows += compare("(a) oracle half/half", real, pred, args.cell_eval_python, work)
        sp.models.ControlBaseline.setup_anndata(adata, perturbation_key="perturbation")
        model = sp.models.ControlBaseline(adata)
        model.train()
        perts = sorted(set(adata.obs["perturbation"]) - {"control"})
        rows += compare(
            "(b) control baseline", adata, model.get_perturbation_profiles(perts), args.cell_eval_python, work
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    version = subprocess.run(
        [args.cell_eval_python, "-c", "import importlib.metadata as m; print(m.version('cell-eval'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    md = (
        "## Agreement with cell-eval (mae, pds, des)\n\n"
        f"Norman 2019 part of `norman19_mcfaline23_devel.h5ad` ({adata.n_obs} cells, {adata.n_vars} genes, "
        f"33 perturbations). Ours: `sp.tl.evaluate_perturbations`; reference: PyPI `cell-eval` {version} "
        "(`MetricsEvaluator(...).compute(profile='vcc')`, separate venv, subprocess) on the files written by "
        "`sp.tl.to_cell_eval`. `max abs diff` is over perturbations.\n\n"
        "Command: `python benchmarks/celleval_agreement.py` · Machine: "
        + machine()
        + "\n\n"
        + table.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    if not args.no_write:
        write_section("celleval_agreement", md)


if __name__ == "__main__":
    main()
