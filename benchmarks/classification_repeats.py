"""Cell-type classification over repeated train/validation/test splits (split-noise check of issue 5).

The main benchmark (``benchmarks/classification.py``) scores every model on one stratified 70/15/15 split
(seed 0), whose validation and test sets hold about 300 cells each. This script repeats the comparison of the
rows LogisticRegression, XGBoost, Linear, TabNet and SCORE (cross-fitted LogReg embedding) on further splits
(seeds 1..N) with the same protocol and the same defaults: the data loading, normalisation, split and
2,000-HVG selection on each split's training cells are ``classification.load``; the model settings are
``classification.model_specs``; SCORE uses its built-in cross-fitted LogReg encoder. Every
model fits on the training cells, uses the validation cells exactly as the main benchmark does (early
stopping / calibration; none for LogisticRegression) and is scored on the test cells. No speed is measured.
Model seeds stay at ``sp.settings.seed = 0`` as in the main benchmark; only the split changes.

Raw per-seed rows are saved to ``--out`` after every model, and a rerun with the same ``--out`` skips the
rows already there, so an interrupted run can be resumed or reported (``--report-only`` / ``--merge``).

Run (one process per dataset, in parallel, then merge)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/classification_repeats.py --datasets mouse_bladder \\
        --seeds 1 2 3 --out /tmp/rep_bladder.json
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/classification_repeats.py --datasets kang18 \\
        --seeds 1 2 3 --out /tmp/rep_kang.json
    python benchmarks/classification_repeats.py --merge /tmp/rep_bladder.json /tmp/rep_kang.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import classification as C  # noqa: E402  (the main benchmark: loading, split, HVG, model settings)

SECTION = "classification_repeats"
ROWS = ["LogisticRegression", "XGBoost", "Linear", "TabNet", "SCORE (cross-fitted LogReg embedding)"]
SCORE_ROW = "SCORE (cross-fitted LogReg embedding)"
DATASETS = ["mouse_bladder", "kang18"]


def load_split(name: str, seed: int):
    """``classification.load`` with the split seed ``seed`` (it reads the module constant ``SEED``)."""
    old = C.SEED
    C.SEED = seed
    try:
        return C.load(name)
    finally:
        C.SEED = old


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)


def run_seed(name: str, seed: int, *, quick: bool, state: dict, out: Path) -> None:
    """Fit and score the rows of ``ROWS`` on the split ``seed`` of dataset ``name``; append to ``state``."""

    import scpredict as sp

    done = {(r["dataset"], r["seed"], r["model"]) for r in state["rows"]}
    todo = [m for m in ROWS if (name, seed, m) not in done]
    if not todo:
        return
    load_start = os.getloadavg()[0]
    adata = load_split(name, seed)
    fit, test, tr, va = C.split_fit_test(adata)
    truth = test.obs["cell_type"].astype(str).to_numpy()
    state["infos"].setdefault(name, {})[str(seed)] = {
        **C.split_sizes(adata, test, tr, va),
        "n_test_classes": int(len(set(truth))),
    }
    specs = C.model_specs(quick)
    for label in todo:
        cls_name, init, train_kw, _ = specs[label]
        cls = getattr(sp.models, cls_name)
        model, train_s, val_rep, rep = C.fit_and_score(cls, fit, test, init, train_kw, tr, va)
        row = {
            "dataset": name,
            "seed": seed,
            "model": label,
            "macro_f1": rep["macro_f1"],
            "accuracy": rep["accuracy"],
            "val_macro_f1": val_rep["macro_f1"],
            "val_accuracy": val_rep["accuracy"],
            "train_s": train_s,
            "load_avg_1min": [load_start, os.getloadavg()[0]],
            **{
                f"train_{k}": v
                for k, v in (model.train_params_ or {}).items()
                if k in ("timestep_range", "class_prior")
            },
        }
        state["rows"].append(row)
        _save(out, state)
        print(json.dumps(row, default=str), flush=True)


# ---------------------------------------------------------------- report
def _ms(values, sign: str = "") -> str:
    """Mean ± sd (``sign="+"``: with an explicit sign, for differences)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:{sign}.3f}"
    return f"{v.mean():{sign}.3f} ± {v.std(ddof=1):.3f}"


def _signed_ms(values) -> str:
    return _ms(values, sign="+")


def paired(df):
    """Per (dataset, seed): TabNet − Linear and SCORE − max(LogReg, XGBoost) test macro F1 (complete seeds)."""
    import pandas as pd

    wide = df.pivot_table(index=["dataset", "seed"], columns="model", values="macro_f1")
    out = pd.DataFrame(index=wide.index)
    if {"TabNet", "Linear"} <= set(wide.columns):
        out["TabNet − Linear"] = wide["TabNet"] - wide["Linear"]
    if {SCORE_ROW, "LogisticRegression", "XGBoost"} <= set(wide.columns):
        best = wide[["LogisticRegression", "XGBoost"]].max(axis=1, skipna=False)
        out["SCORE − max(LogReg, XGBoost)"] = wide[SCORE_ROW] - best
    return out


def report(state: dict, *, command: str, uptime: str, note: str | None = None) -> str:
    import pandas as pd
    from _report import machine

    df = pd.DataFrame(state["rows"])
    df = df[df["model"].isin(ROWS)]
    complete = df.groupby(["dataset", "seed"])["model"].nunique()
    complete = complete[complete == len(ROWS)]
    loads = [x for r in state["rows"] for x in (r.get("load_avg_1min") or [])]
    load_txt = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "not recorded"
    lines = [
        "## Cell-type classification over repeated splits (`benchmarks/classification_repeats.py`)",
        "",
        f"Command: {command} — {machine()}; torch with 1 thread, `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1`; "
        f"the machine was shared with other engineers' jobs (1-minute load average {load_txt} during the "
        f"run; `uptime` at report time: `{uptime}`).",
        "",
        "These are **additional held-out splits** (stratified 70/15/15, split seeds ≥ 1; seed 0 is the single split of "
        "the main Cell-type classification table), **not used for any choice** of model, setting or default. The protocol is the main "
        "benchmark's, with its current defaults: 2,000 HVGs chosen on each split's training cells only, "
        "models fit on train, validation used only for early stopping / calibration (as in the main "
        "benchmark), test macro F1 and accuracy on each split's held-out test cells; model seeds fixed at 0. "
        "Speed is not measured. Mean ± sd (sample sd) over the completed split seeds; the paired "
        "differences are taken within each split.",
        "",
        *([note, ""] if note else []),
    ]
    for name in [d for d in DATASETS if d in set(df["dataset"])]:
        sub = df[df["dataset"] == name]
        seeds_done = sorted(int(s) for (d, s) in complete.index if d == name)
        seeds_any = sorted(int(s) for s in sub["seed"].unique())
        infos = state["infos"].get(name, {})
        info = next(iter(infos.values()), {})
        partial = sorted(set(seeds_any) - set(seeds_done))
        lines.append(
            f"**{name}**: {len(seeds_done)} split seed(s) completed "
            f"({', '.join(map(str, seeds_done)) or 'none'}); {info.get('n_cells', '?')} cells, "
            f"{info.get('n_classes', '?')} classes, train/val/test ≈ {info.get('n_train', '?')}/"
            f"{info.get('n_val', '?')}/{info.get('n_test', '?')}."
        )
        lines.append("")
        lines.append(
            "| model | test macro F1 (mean ± sd) | test accuracy (mean ± sd) | n | per seed macro F1 |"
        )
        lines.append("|---|---|---|---|---|")
        done = sub[sub["seed"].isin(seeds_done)]
        for m in ROWS:
            r = done[done["model"] == m].sort_values("seed")
            if r.empty:
                continue
            per = ", ".join(f"{s}: {v:.3f}" for s, v in zip(r["seed"], r["macro_f1"], strict=True))
            lines.append(f"| {m} | {_ms(r['macro_f1'])} | {_ms(r['accuracy'])} | {len(r)} | {per} |")
        lines.append("")
        for s in partial:  # an interrupted seed: shown, not averaged
            r = sub[sub["seed"] == s]
            txt = ", ".join(f"{m} {v:.3f}" for m, v in zip(r["model"], r["macro_f1"], strict=True))
            lines += [f"Incomplete split seed {s} (not in the means): test macro F1 {txt}.", ""]
    complete_rows = df.set_index(["dataset", "seed"]).index.isin(complete.index)
    pdiff = paired(df[complete_rows])
    if not pdiff.empty:
        lines += [
            "Paired differences of test macro F1 per completed split seed (the two goals of issue 5):",
            "",
            "| dataset | difference | mean ± sd | se of mean | seeds ≥ 0 | per seed |",
            "|---|---|---|---|---|---|",
        ]
        for name in [d for d in DATASETS if d in pdiff.index.get_level_values(0)]:
            for col in pdiff.columns:
                v = pdiff.loc[name, col].dropna()
                if v.empty:
                    continue
                per = ", ".join(f"{int(s)}: {x:+.3f}" for s, x in v.items())
                se = f"{v.std(ddof=1) / len(v) ** 0.5:.3f}" if len(v) > 1 else "–"
                lines.append(
                    f"| {name} | {col} | {_signed_ms(v)} | {se} | {int((v >= 0).sum())}/{len(v)} | {per} |"
                )
        lines.append("")
    lines += [
        "se = sd / √n. The splits are drawn from the same cells (each test set is 15 % of them), so they are "
        "not independent samples and the se understates the uncertainty somewhat; the seed-to-seed sd of a "
        "paired difference is the size of the split noise one single split (such as the main table's) carries.",
        "",
    ]
    priors = df[(df["model"] == SCORE_ROW) & complete_rows]
    if "train_class_prior" in priors and priors["train_class_prior"].notna().any():
        parts = []
        for name, p in priors.groupby("dataset", sort=False):
            emp = sorted(int(s) for s in p.loc[p["train_class_prior"] == "empirical", "seed"])
            parts.append(f"{name} {len(emp)}/{len(p)} (seeds {', '.join(map(str, emp)) or 'none'})")
        lines += [
            "SCORE's `class_prior='auto'` (chosen on each split's validation cells) took the empirical class "
            f"prior on: {'; '.join(parts)}; the other splits used none.",
            "",
        ]
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        la = os.getloadavg()
        return f"load average: {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[1, 2, 3], help="split seeds (0 is the main table)"
    )
    parser.add_argument(
        "--out", default="/tmp/classification_repeats.json", help="raw results (resumed if present)"
    )
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke run (not written to docs)")
    parser.add_argument("--report-only", action="store_true", help="write the report from --out, run nothing")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="write the report from several --out files"
    )
    parser.add_argument("--no-write", action="store_true", help="print the report, do not touch docs")
    parser.add_argument("--note", help="a paragraph for the report (e.g. which rows were rerun and why)")
    args = parser.parse_args()
    if 0 in args.seeds:
        parser.error("seed 0 is the main benchmark's split; use new seeds")
    out = Path(args.out)
    if args.merge:
        state = {"rows": [], "infos": {}, "quick": False}
        for f in args.merge:
            s = json.loads(Path(f).read_text())
            state["rows"] += s["rows"]
            state["infos"].update(s["infos"])
            state["quick"] = state["quick"] or s.get("quick", False)
    elif args.report_only:
        state = json.loads(out.read_text())
    else:
        import torch

        torch.set_num_threads(1)  # 2 shared cores
        import scpredict as sp

        sp.settings.seed = C.SEED  # model seeds as in the main benchmark; only the split seed changes
        sp.settings.progress_bar = "none"
        sp.settings.log_dir = Path("/tmp/scpredict_bench_logs")
        state = json.loads(out.read_text()) if out.exists() else {"rows": [], "infos": {}}
        if state.get("quick", args.quick) != args.quick:
            parser.error(f"{out} holds results of a {'quick' if state['quick'] else 'full'} run")
        state["quick"] = args.quick
        for seed in args.seeds:  # seed-major: every finished seed is a complete comparison
            for name in args.datasets:
                run_seed(name, seed, quick=args.quick, state=state, out=out)
        _save(out, state)
    seeds = sorted({int(r["seed"]) for r in state["rows"]})
    files = args.merge or [str(out)]
    command = (
        "`OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/classification_repeats.py --datasets <set> "
        f"--seeds {' '.join(map(str, seeds))} --out <set>.json`, one process per dataset in parallel, then "
        f"`python benchmarks/classification_repeats.py --merge {' '.join(Path(f).name for f in files)}`"
        if args.merge
        else f"`OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/classification_repeats.py --seeds "
        f"{' '.join(map(str, seeds))}`"
    )
    text = report(state, command=command, uptime=_uptime(), note=args.note)
    print(text)
    have = {r["dataset"] for r in state["rows"]}
    if not state.get("quick") and not args.no_write and have == set(DATASETS):
        from _report import write_section

        write_section(SECTION, text)


if __name__ == "__main__":
    main()
