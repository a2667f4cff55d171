"""Job commands of the ``scpredict`` CLI: ``train``, ``predict`` and ``evaluate`` (for batch systems).

.. code-block:: bash

    scpredict train LinearClassifier --data train.h5ad --config configs/linear_classifier.yaml --out run/
    scpredict train LinearClassifier --data train.h5ad --config ... --out run/ --resume   # after a crash
    scpredict predict --model run/model --data test.h5ad --out pred.h5ad
    scpredict evaluate --predictions pred.h5ad --data test.h5ad --key linear --truth cell_type --out m.json

The YAML config mirrors the model's parameters (the seeds' ``CONFIG`` dicts), one section per call::

    setup:   {labels_key: cell_type}        # Model.setup_anndata(adata, **setup)
    model:   {dropout_rate: 0.1}            # Model(adata, **model)
    train:   {max_epochs: 20, batch_size: 256, lr: 0.005}   # model.train(**train) (Lightning args too)
    data:    {backed: true, block_size: 8192, num_workers: 2}  # how the cells are read

Under Lightning DDP (``--strategy ddp --devices N [--num-nodes M]``, or SLURM ``srun``), every rank runs the
same command; each reads only its shard of the cells, and only rank 0 writes the model and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_job_commands", "load_config", "find_last_checkpoint", "read_cells"]

_SECTIONS = ("setup", "model", "train", "data")
_DATA_KEYS = ("backed", "layer", "block_size", "mix_blocks", "num_workers", "prefetch_factor", "pad_shards")
_MODEL_DIR = "model"
_LOG_DIR = "logs"


# --------------------------------------------------------------------------------------------- helpers
def load_config(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """Read a YAML job config: sections ``setup``, ``model``, ``train``, ``data`` (all optional).

    Parameters
    ----------
    path
        YAML file (``None`` gives empty sections).

    Returns
    -------
    dict section → dict of arguments.
    """
    if path is None:
        return {s: {} for s in _SECTIONS}
    import yaml

    text = Path(path).read_text()
    cfg = yaml.safe_load(text) or {}
    if not isinstance(cfg, dict):
        msg = f"{path}: the config must be a mapping with sections {list(_SECTIONS)}."
        raise ValueError(msg)
    unknown = sorted(set(cfg) - set(_SECTIONS))
    if unknown:
        msg = f"{path}: unknown sections {unknown}; allowed: {list(_SECTIONS)}."
        raise ValueError(msg)
    out = {}
    for s in _SECTIONS:
        sec = cfg.get(s) or {}
        if not isinstance(sec, dict):
            msg = f"{path}: section {s!r} must be a mapping, got {type(sec).__name__}."
            raise ValueError(msg)
        out[s] = dict(sec)
    bad = sorted(set(out["data"]) - set(_DATA_KEYS))
    if bad:
        msg = f"{path}: unknown keys in 'data': {bad}; allowed: {list(_DATA_KEYS)}."
        raise ValueError(msg)
    return out


def find_last_checkpoint(out: str | Path) -> Path | None:
    """The most recent ``last.ckpt`` (or on-exception checkpoint) under ``out/logs``, or ``None``."""
    root = Path(out) / _LOG_DIR
    found = [p for p in root.rglob("*.ckpt") if p.name == "last.ckpt" or p.name.startswith("last-v")]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime)


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def read_cells(path: str | Path, *, backed: bool | None = None, **data: Any) -> Any:
    """Open ``path`` for a job: in memory, or lazily (expression on disk) for out-of-core formats.

    Parameters
    ----------
    path
        ``.h5ad``, ``.zarr``, a chunk directory or parquet cells.
    backed
        ``True``: expression stays on disk (every format); ``False``: load it (h5ad/zarr only);
        ``None`` (default): lazy for zarr, chunks and parquet, in memory for h5ad.
    **data
        ``layer``, ``block_size``, ``mix_blocks``, ``num_workers``, ... (see :class:`scpredict.data.CellDataModule`).

    Returns
    -------
    AnnData (lazy: made by :meth:`scpredict.data.CellDataModule.to_adata`).
    """
    import anndata

    from .data import CellDataModule

    p = Path(path)
    if not p.exists():
        msg = f"--data {p} does not exist."
        raise FileNotFoundError(msg)
    name = p.name.lower()
    in_memory_ok = name.endswith((".h5ad", ".h5", ".zarr"))
    if backed is None:
        backed = not in_memory_ok
    if not backed:
        if not in_memory_ok:
            msg = f"{p} can only be read lazily (set data.backed: true or leave it unset)."
            raise ValueError(msg)
        return anndata.read_zarr(p) if name.endswith(".zarr") else anndata.read_h5ad(p)
    data = {k: v for k, v in data.items() if v is not None}
    return CellDataModule(p, **data).to_adata()


def _to_memory(adata: Any) -> Any:
    """Load a lazy AnnData's expression (for models that are not torch models)."""
    from .data import source_of

    found = source_of(adata)
    if found is None:
        return adata
    src, rows = found
    import anndata

    x = src.read_rows(0, src.n_obs)
    if rows is not None:
        x = x[rows]
    out = anndata.AnnData(X=x, obs=adata.obs.copy(), var=src.var.copy(), obsm=dict(adata.obsm))
    if src.layer not in (None, "raw"):
        out.layers[src.layer] = x
    return out


def _model_class(name: str) -> type:
    from . import models

    names = [n for n in models.__all__ if n not in ("BaseModel", "PerturbationModel")]
    if name not in names:
        msg = f"unknown model {name!r}; available: {', '.join(sorted(names))}."
        raise SystemExit(msg)
    return getattr(models, name)


def _saved_class(model_dir: Path) -> type:
    meta = model_dir / "model.json"
    if not meta.is_file():
        msg = f"--model {model_dir}: no model.json (not a saved scpredict model)."
        raise SystemExit(msg)
    return _model_class(json.loads(meta.read_text())["model"])


def _parse_options(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            msg = f"--option {item!r}: expected KEY=VALUE."
            raise SystemExit(msg)
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _extra_callbacks() -> list[Any]:
    """Callbacks added to every CLI training run (a hook for tests and site customisation)."""
    return []


# --------------------------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    import yaml

    cfg = load_config(args.config)
    cls = _model_class(args.model)
    out = Path(args.out)
    data_cfg = dict(cfg["data"])
    backed = data_cfg.pop("backed", None)
    if args.backed:
        backed = True
    adata = read_cells(args.data, backed=backed, **data_cfg)
    if not cls._uses_torch:
        adata = _to_memory(adata)
    cls.setup_anndata(adata, **cfg["setup"])
    model = cls(adata, **cfg["model"])
    train = dict(cfg["train"])
    for flag, key in (
        ("max_epochs", "max_epochs"),
        ("accelerator", "accelerator"),
        ("devices", "devices"),
        ("strategy", "strategy"),
        ("num_nodes", "num_nodes"),
    ):
        v = getattr(args, flag)
        if v is not None:
            train[key] = v
    ckpt = None
    if args.resume:
        ckpt = find_last_checkpoint(out)
        if ckpt is None:
            print(f"--resume: no checkpoint under {out / _LOG_DIR}; starting from scratch.", file=sys.stderr)
    if cls._uses_torch:
        train.setdefault("default_root_dir", str(out / _LOG_DIR))
        train.setdefault("logger", "csv")
        cbs = list(train.pop("callbacks", [])) + _extra_callbacks()
        if cbs:
            train["callbacks"] = cbs
        if ckpt is not None:
            train["ckpt_path"] = str(ckpt)
    t0 = time.perf_counter()
    model.train(**train)
    seconds = time.perf_counter() - t0
    trainer = getattr(model, "trainer_", None)
    rank = int(getattr(trainer, "global_rank", _rank()) or 0)
    if rank == 0:
        model.save(out / _MODEL_DIR, overwrite=True)
        summary = {
            "model": cls.__name__,
            "data": str(args.data),
            "n_obs": int(adata.n_obs),
            "n_vars": int(adata.n_vars),
            "seconds": round(seconds, 3),
            "resumed_from": None if ckpt is None else str(ckpt),
            "train_params": getattr(model, "train_params_", {}),
            "history": {k: v.iloc[:, 0].tolist() for k, v in model.history.items()},
        }
        (out / "train.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in cfg.items() if v}, sort_keys=False))
        print(f"model saved to {(out / _MODEL_DIR).resolve()} ({seconds:.1f} s)")
    return 0


# --------------------------------------------------------------------------------------------- predict
def _snapshot(adata: Any) -> dict[str, set]:
    return {
        "obs": set(adata.obs.columns),
        "obsm": set(adata.obsm.keys()),
        "layers": set(adata.layers.keys()),
        "uns": set(adata.uns.keys()),
    }


def _write_outputs(adata: Any, before: dict[str, set], path: Path) -> list[str]:
    """Write what a predict call added to ``adata`` (and only that) to ``path``."""
    import anndata
    import numpy as np
    import pandas as pd

    new_obs = [c for c in adata.obs.columns if c not in before["obs"]]
    new_obsm = [k for k in adata.obsm.keys() if k not in before["obsm"]]
    new_layers = [k for k in adata.layers.keys() if k not in before["layers"]]
    new_uns = [k for k in adata.uns.keys() if k not in before["uns"]]
    written = new_obs + new_obsm + new_layers
    name = path.name.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith((".h5ad", ".zarr")):
        out = anndata.AnnData(
            obs=adata.obs[new_obs].copy(),
            var=pd.DataFrame(index=adata.var_names.copy()),
            obsm={k: adata.obsm[k] for k in new_obsm},
            layers={k: adata.layers[k] for k in new_layers},
            uns={k: adata.uns[k] for k in new_uns},
        )
        if name.endswith(".zarr"):
            out.write_zarr(path)
        else:
            out.write_h5ad(path)
        return written
    if new_layers:
        msg = f"this prediction writes layers {new_layers}; use an .h5ad or .zarr --out to keep them."
        raise SystemExit(msg)
    table = adata.obs[new_obs].copy()
    for k in new_obsm:
        m = adata.obsm[k]
        m = m.to_numpy() if isinstance(m, pd.DataFrame) else np.asarray(m)
        cols = list(adata.obsm[k].columns) if isinstance(adata.obsm[k], pd.DataFrame) else range(m.shape[1])
        for j, c in enumerate(cols):
            table[f"{k}_{c}"] = m[:, j]
    if name.endswith(".parquet"):
        table.to_parquet(path)
    elif name.endswith((".tsv", ".txt")):
        table.to_csv(path, sep="\t")
    else:
        table.to_csv(path)
    return written


def _predict(args: argparse.Namespace) -> int:
    model_dir = Path(args.model)
    cls = _saved_class(model_dir)
    adata = read_cells(args.data, backed=not args.in_memory, block_size=args.block_size)
    if not cls._uses_torch:
        adata = _to_memory(adata)
    model = cls.load(model_dir)
    options = _parse_options(args.option)
    if args.key_added is not None:
        options["key_added"] = args.key_added
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    method = getattr(model, args.method, None)
    if method is None or args.method.startswith("_"):
        msg = f"{cls.__name__} has no method {args.method!r}."
        raise SystemExit(msg)
    before = _snapshot(adata)
    distributed = _init_distributed() if args.distributed else False
    if distributed:
        from .data import distributed_inference

        with distributed_inference():
            method(adata, **options)
    else:
        method(adata, **options)
    if _rank() == 0:
        written = _write_outputs(adata, before, Path(args.out))
        print(f"wrote {written} for {adata.n_obs} cells to {Path(args.out).resolve()}")
    return 0


def _init_distributed() -> bool:
    """Join the process group described by the environment (``torchrun`` / SLURM ``srun``)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    if world <= 1:
        return False
    if not dist.is_initialized():
        os.environ.setdefault("RANK", str(_rank()))
        os.environ.setdefault("WORLD_SIZE", str(world))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


# --------------------------------------------------------------------------------------------- evaluate
def _expression_blocks(adata: Any, layer: str | None, var_names: Any, *, block: int = 4096):
    """Rows of the reference expression (aligned to ``var_names``), block by block, as dense float64."""
    from .data import open_cells, source_of
    from .data._backed import _GeneMap

    found = source_of(adata, layer=layer)
    src, rows = found if found is not None else (open_cells(adata, layer=layer), None)
    genes = _GeneMap(src.var_names, var_names)
    n = adata.n_obs
    for start in range(0, n, block):
        stop = min(start + block, n)
        if rows is None:
            x = src.read_rows(start, stop)
        else:
            r = rows[start:stop]
            x = src.read_rows(int(r.min()), int(r.max()) + 1)[r - int(r.min())]
        yield start, stop, genes(x).toarray().astype("float64")


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    if (args.model is None) == (args.predictions is None):
        msg = "evaluate needs exactly one of --model DIR (predict, then score) or --predictions FILE."
        raise SystemExit(msg)
    data = read_cells(args.data, backed=True)
    key = args.key
    truth = args.truth
    layer = args.layer
    if args.model is not None:
        model_dir = Path(args.model)
        cls = _saved_class(model_dir)
        model = cls.load(model_dir)
        if not cls._uses_torch:
            data = _to_memory(data)
        key = key or "prediction"
        before = _snapshot(data)
        model.predict(data, key_added=key)
        preds = data
        if truth is None and "labels" in model.setup_.categorical:
            truth = model.setup_.categorical["labels"]
        if layer is None:
            layer = model.setup_.layer
        del before
    else:
        import anndata

        p = Path(args.predictions)
        name = p.name.lower()
        if name.endswith(".h5ad"):
            preds = anndata.read_h5ad(p)
        elif name.endswith(".zarr"):
            preds = anndata.read_zarr(p)
        else:
            import pandas as pd

            table = pd.read_parquet(p) if name.endswith(".parquet") else pd.read_csv(p, index_col=0)
            table.index = table.index.astype(str)
            preds = anndata.AnnData(obs=table)
        if key is None:
            candidates = [k for k in preds.uns.keys()] or list(preds.obs.columns[:1])
            if not candidates:
                msg = "--key: the predictions file holds no prediction."
                raise SystemExit(msg)
            key = candidates[0]
    result: dict[str, Any] = {"key": key, "n_obs": int(data.n_obs), "data": str(args.data)}
    if key in preds.obs.columns:
        from .metrics._classification import accuracy, macro_f1, per_class_f1, weighted_f1

        if truth is None or truth not in data.obs.columns:
            msg = f"--truth: name the obs column of {args.data} with the true labels (columns: {list(data.obs.columns)})."
            raise SystemExit(msg)
        pred = preds.obs[key].astype(str).reindex(data.obs_names.astype(str))
        if pred.isna().any():
            msg = f"{int(pred.isna().sum())} cells of {args.data} have no prediction under {key!r}."
            raise SystemExit(msg)
        y = data.obs[truth].astype(str).to_numpy()
        yhat = pred.to_numpy()
        result.update(
            task="classification",
            truth=truth,
            accuracy=float(accuracy(y, yhat)),
            macro_f1=float(macro_f1(y, yhat)),
            weighted_f1=float(weighted_f1(y, yhat)),
            per_class_f1={str(k): float(v) for k, v in per_class_f1(y, yhat).items()},
        )
    elif key in preds.layers:
        pred = preds.layers[key]
        if preds.n_obs != data.n_obs or not np.array_equal(preds.obs_names, data.obs_names):
            msg = (
                f"the predictions ({preds.n_obs} cells) do not match the cells of {args.data} ({data.n_obs})."
            )
            raise SystemExit(msg)
        se = ae = 0.0
        count = 0
        pear = []
        for start, stop, ref in _expression_blocks(data, layer, preds.var_names):
            p = np.asarray(pred[start:stop], dtype=np.float64)
            ok = np.isfinite(p)
            d = np.where(ok, p - ref, 0.0)
            se += float((d**2).sum())
            ae += float(np.abs(d).sum())
            count += int(ok.sum())
            pc = np.where(ok, p, 0.0) - np.where(ok, p, 0.0).mean(1, keepdims=True)
            rc = ref - ref.mean(1, keepdims=True)
            den = np.sqrt((pc**2).sum(1) * (rc**2).sum(1))
            pear.append(np.where(den > 0, (pc * rc).sum(1) / np.where(den > 0, den, 1.0), np.nan))
        result.update(
            task="expression",
            layer=layer,
            mse=se / max(count, 1),
            mae=ae / max(count, 1),
            mean_cell_pearson=float(np.nanmean(np.concatenate(pear))),
        )
    else:
        msg = f"--key {key!r} is neither an obs column nor a layer of the predictions."
        raise SystemExit(msg)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    return 0


# --------------------------------------------------------------------------------------------- parser
def add_job_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``predict`` and ``evaluate`` on the ``scpredict`` parser."""
    tr = sub.add_parser("train", help="train a model from a YAML config; checkpoints allow --resume")
    tr.add_argument("model", help="model class, e.g. LinearClassifier, ContextCycleAE")
    tr.add_argument("--data", required=True, help=".h5ad, .zarr, chunk directory or parquet cells")
    tr.add_argument("--config", default=None, help="YAML with sections setup/model/train/data")
    tr.add_argument("--out", required=True, help="run folder: model/, logs/ (checkpoints), train.json")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    tr.add_argument("--backed", action="store_true", help="stream the cells from disk (default for non-h5ad)")
    tr.add_argument("--max-epochs", dest="max_epochs", type=int, default=None)
    tr.add_argument("--accelerator", default=None, help="cpu, gpu, auto (Lightning)")
    tr.add_argument("--devices", default=None, type=_int_or_str, help="devices per node (Lightning)")
    tr.add_argument("--strategy", default=None, help="e.g. ddp (Lightning)")
    tr.add_argument("--num-nodes", dest="num_nodes", type=int, default=None, help="nodes for multi-node DDP")
    tr.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="apply a saved model to new cells and write its outputs")
    pr.add_argument("--model", required=True, help="folder written by `scpredict train` (run/model)")
    pr.add_argument("--data", required=True, help=".h5ad, .zarr, chunk directory or parquet cells")
    pr.add_argument("--out", required=True, help=".h5ad/.zarr (all outputs) or .csv/.tsv/.parquet (obs/obsm)")
    pr.add_argument("--key-added", dest="key_added", default=None)
    pr.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    pr.add_argument("--block-size", dest="block_size", type=int, default=4096)
    pr.add_argument("--method", default="predict", help="model method to call (default: predict)")
    pr.add_argument("--option", action="append", help="extra KEY=VALUE argument of the method (YAML value)")
    pr.add_argument("--in-memory", dest="in_memory", action="store_true", help="load h5ad/zarr into memory")
    pr.add_argument("--distributed", action="store_true", help="split inference over torchrun/srun ranks")
    pr.set_defaults(func=_predict)

    ev = sub.add_parser("evaluate", help="score predictions against the truth in a data file (JSON)")
    ev.add_argument("--data", required=True, help="cells with the truth (labels in obs, or expression)")
    ev.add_argument("--predictions", default=None, help="file written by `scpredict predict`")
    ev.add_argument("--model", default=None, help="or: a saved model to predict with first")
    ev.add_argument("--key", default=None, help="prediction key (obs column or layer)")
    ev.add_argument("--truth", default=None, help="obs column of true labels (classification)")
    ev.add_argument("--layer", default=None, help="reference expression layer (expression outputs)")
    ev.add_argument("--out", default=None, help="write the metrics as JSON here")
    ev.set_defaults(func=_evaluate)


def _int_or_str(v: str) -> int | str:
    try:
        return int(v)
    except ValueError:
        return v
