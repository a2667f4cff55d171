"""Choosing a setting of one classifier on validation cells of extra splits (the selection protocol of issue 5).

One split's validation set (about 300 cells; mouse-bladder classes with 1-4 validation cells) cannot tell two
settings apart when they differ by less than about 0.03 macro F1. Settings are therefore compared on the
validation cells of five further splits per set (split seeds 101-105 by default: disjoint from the main
benchmark's split 0 and from the repeated splits 1-15 of ``classification_repeats.py``), 10 validation sets
over the two sets. The data loading, normalisation, split, 2,000-HVG selection on the training cells, and the
model's default settings are those of ``benchmarks/classification.py``; a configuration overrides the row's
``init`` and ``train`` keyword arguments. Test macro F1 is recorded for transparency and is not used to
choose.

Raw rows are saved to ``--out`` after every fit; a rerun with the same ``--out`` skips finished
``(dataset, seed, config)`` rows. The report (printed, not written to the docs) gives per set and
configuration the mean validation / test macro F1 and, against the first configuration, the paired
difference of validation macro F1 (mean ± sd over splits, splits higher).

Run (one process per dataset, in parallel, then report both)::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/classification_selection.py \\
        --model "SCORE (cross-fitted LogReg embedding)" --datasets kang18 --out /tmp/sel_kang.json \\
        --configs '{"default": {}, "gaussian_base": {"init": {"gaussian_base": true}}}'
    python benchmarks/classification_selection.py --report /tmp/sel_kang.json /tmp/sel_bladder.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import classification as C  # noqa: E402  (loading, split, HVG, model settings)
from classification_repeats import DATASETS, load_split  # noqa: E402

SEEDS = [101, 102, 103, 104, 105]


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)


def run(name: str, model: str, configs: dict, seeds: list[int], *, quick: bool, out: Path) -> dict:
    """Fit every configuration on every split of ``name``; rows appended to ``out`` as they finish."""

    import scpredict as sp

    state = json.loads(out.read_text()) if out.exists() else {"model": model, "rows": []}
    done = {(r["dataset"], r["seed"], r["config"]) for r in state["rows"]}
    cls_name, init0, train0, _ = C.model_specs(quick)[model]
    cls = getattr(sp.models, cls_name)
    for seed in seeds:
        todo = [c for c in configs if (name, seed, c) not in done]
        if not todo:
            continue
        adata = load_split(name, seed)
        fit, test, tr, va = C.split_fit_test(adata)
        for label in todo:
            over = configs[label]
            m, train_s, val, rep = C.fit_and_score(
                cls, fit, test, {**init0, **over.get("init", {})}, {**train0, **over.get("train", {})}, tr, va
            )
            row = {
                "dataset": name,
                "seed": seed,
                "config": label,
                "overrides": over,
                "val_macro_f1": val["macro_f1"],
                "test_macro_f1": rep["macro_f1"],
                "test_accuracy": rep["accuracy"],
                "train_s": round(train_s, 2),
                "epochs_run": (m.train_params_ or {}).get("epochs_run"),
                "load_avg": round(os.getloadavg()[0], 2),
            }
            state["rows"].append(row)
            _save(out, state)
            print(json.dumps(row, default=str), flush=True)
    return state


def report(rows: list[dict]) -> str:
    """Markdown table: per set and configuration, mean validation / test macro F1 and the paired validation
    difference against the first configuration of that set."""
    import numpy as np

    lines = [
        "| set | config | splits | val macro F1 | test macro F1 | Δ val vs first (mean ± sd) | splits higher |",
        "|---|---|---|---|---|---|---|",
    ]
    all_val: dict[str, list[float]] = {}
    for name in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == name]
        configs = list(dict.fromkeys(r["config"] for r in sub))
        by = {(r["seed"], r["config"]): r for r in sub}
        ref = configs[0]
        for c in configs:
            seeds = sorted(s for s, cc in by if cc == c and (s, ref) in by)
            val = np.array([by[s, c]["val_macro_f1"] for s in seeds])
            test = np.array([by[s, c]["test_macro_f1"] for s in seeds])
            diff = val - np.array([by[s, ref]["val_macro_f1"] for s in seeds])
            all_val.setdefault(c, []).extend(diff.tolist())
            d = "–" if c == ref else f"{diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f}"
            h = "–" if c == ref else f"{int((diff > 0).sum())}/{len(diff)}"
            lines.append(
                f"| {name} | {c} | {len(seeds)} | {val.mean():.3f} | {test.mean():.3f} | {d} | {h} |"
            )
    pooled = [
        f"{c}: {np.mean(v):+.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f} "
        f"({int((np.asarray(v) > 0).sum())}/{len(v)} higher)"
        for c, v in list(all_val.items())[1:]
    ]
    if pooled:
        lines += [
            "",
            "Pooled over sets, Δ validation macro F1 vs the first configuration — " + "; ".join(pooled),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="SCORE (cross-fitted LogReg embedding)", help="a row of the benchmark"
    )
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument(
        "--configs",
        default='{"default": {}}',
        help='JSON {label: {"init": {...}, "train": {...}}}; the first is the reference',
    )
    parser.add_argument("--out", type=Path, help="raw rows (JSON), resumed if present")
    parser.add_argument("--quick", action="store_true", help="few epochs: a smoke run")
    parser.add_argument("--report", nargs="+", type=Path, help="print the report of saved --out files")
    args = parser.parse_args()
    if args.report:
        rows = [r for p in args.report for r in json.loads(p.read_text())["rows"]]
        print(report(rows))
        return
    if args.out is None:
        parser.error("--out is required unless --report is given")
    configs = json.loads(args.configs)
    if args.model not in C.model_specs(False):
        parser.error(f"--model must be one of {sorted(C.model_specs(False))}")
    state = {"rows": []}
    for name in args.datasets:
        state = run(name, args.model, configs, args.seeds, quick=args.quick, out=args.out)
    print(report(state["rows"]))


if __name__ == "__main__":
    main()
