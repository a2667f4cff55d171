"""Evaluate perturbation predictions against held-out cells, and benchmark models beside baselines."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

from .. import metrics as M
from .._utils import check_keys, get_array
from ..pp._check import InputScaleError, check_input

__all__ = ["evaluate_perturbations", "benchmark_perturbation_models", "PERTURBATION_METRICS"]

#: every metric :func:`evaluate_perturbations` computes, in table order
PERTURBATION_METRICS: tuple[str, ...] = (
    "mse",
    "mae",
    "mse_de20",
    "pearson",
    "pearson_delta",
    "pearson_delta_de20",
    "r2_mean",
    "r2_mean_de",
    "r2_scgen",
    "l2_top1000",
    "direction_de20",
    "des",
    "pds",
    "vcc_score",
    "energy_distance",
    "mmd",
)
_DE_METRICS = {"mse_de20", "pearson_delta_de20", "r2_mean_de", "direction_de20"}
_CELLEVAL = {"des", "pds", "vcc_score"}
_DISTRIBUTION = {"energy_distance", "mmd"}
#: ``adata.uns`` entry caching the DE gene ranking of a dataset
DE_CACHE_KEY = "_scpredict_de_genes"


def _dense(x) -> np.ndarray:
    if sp_sparse.issparse(x):
        x = x.toarray()
    elif hasattr(x, "to_memory"):
        x = x.to_memory()
        x = x.toarray() if sp_sparse.issparse(x) else x
    return np.asarray(x, dtype=np.float64)


def _declared(adata: AnnData, layer: str | None) -> bool:
    if "log1p" in adata.uns or adata.uns.get("scale") == "log1p":
        return True
    if layer is not None:
        entry = adata.uns.get(layer, {})
        params = entry.get("params", {}) if isinstance(entry, Mapping) else {}
        return isinstance(params, Mapping) and params.get("scale") == "log1p"
    return False


def _check_scale(adata: AnnData, *, layer: str | None, scale: str | None, what: str) -> None:
    if scale is not None and scale != "log1p":
        raise ValueError(f"scale must be 'log1p' (log-normalized expression) or None, got {scale!r}.")
    if scale is None and not _declared(adata, layer):
        where = "X" if layer is None else f"layers[{layer!r}]"
        raise ValueError(
            f"the scale of {what} ({where}) is not declared. Metrics are defined on log-normalized expression: "
            "pass scale='log1p' once you have checked it is (sc.pp.normalize_total + sc.pp.log1p, which also "
            "records adata.uns['log1p']; model predictions record it in uns[key_added]['params'])."
        )
    try:
        check_input(adata, layer=layer, scale="log1p", name=what)
    except InputScaleError as e:
        raise InputScaleError(str(e)) from None


def _rank_de_genes(
    x: np.ndarray,
    *,
    labels: np.ndarray,
    covs: np.ndarray,
    conditions: list[tuple[str, str]],
    control: str,
    n_genes: int,
    method: str,
    var_names: pd.Index,
) -> dict[str, list[str]]:
    """scanpy ``rank_genes_groups`` of each condition against the control of its covariate, ranked by |score|."""
    import scanpy as sc

    out: dict[str, list[str]] = {}
    for cov in sorted({c for _, c in conditions}):
        in_cov = covs == cov
        perts = sorted({p for p, c in conditions if c == cov})
        keep = in_cov & np.isin(labels, [*perts, control])
        sub = AnnData(
            X=x[keep].astype(np.float32),
            obs=pd.DataFrame(
                {"g": pd.Categorical(labels[keep])}, index=[f"c{i}" for i in range(int(keep.sum()))]
            ),
            var=pd.DataFrame(index=pd.Index(var_names.astype(str))),
        )
        groups = [p for p in perts if (labels[keep] == p).sum() >= 2]
        if not groups or (labels[keep] == control).sum() < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.tl.rank_genes_groups(
                sub,
                "g",
                groups=groups,
                reference=control,
                method=method,
                rankby_abs=True,
                n_genes=min(n_genes, sub.n_vars),
                key_added="de",
                use_raw=False,
            )
        names = sub.uns["de"]["names"]
        for p in groups:
            out[f"{p}|{cov}"] = [str(g) for g in names[p]]
    return out


def _de_genes(
    adata: AnnData,
    x: np.ndarray,
    *,
    labels: np.ndarray,
    covs: np.ndarray,
    conditions: list[tuple[str, str]],
    params: dict[str, Any],
) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    """DE ranking from the cache in ``adata.uns`` when its parameters match, else computed (with the new cache
    entry returned, to be written only once the whole evaluation has succeeded)."""
    cache = adata.uns.get(DE_CACHE_KEY)
    if isinstance(cache, Mapping):
        try:
            same = json.loads(cache.get("params", "{}")) == params
            ranking = json.loads(cache.get("ranking", "{}"))
        except (TypeError, ValueError):
            same, ranking = False, {}
        wanted = {f"{p}|{c}" for p, c in conditions}
        if same and wanted <= set(ranking):
            return ranking, None
    ranking = _rank_de_genes(
        x,
        labels=labels,
        covs=covs,
        conditions=conditions,
        control=params["control"],
        n_genes=params["n_ranked"],
        method=params["method"],
        var_names=adata.var_names,
    )
    if isinstance(cache, Mapping):
        try:
            if json.loads(cache.get("params", "{}")) == params:
                ranking = {**json.loads(cache.get("ranking", "{}")), **ranking}
        except (TypeError, ValueError):
            pass
    return ranking, {"params": json.dumps(params), "ranking": json.dumps(ranking)}


def evaluate_perturbations(
    adata: AnnData,
    predicted: AnnData,
    *,
    perturbation_key: str,
    control: str = "control",
    covariate_key: str | None = None,
    metrics: Sequence[str] | None = None,
    layer: str | None = None,
    predicted_layer: str | None = None,
    scale: Literal["log1p"] | None = None,
    n_de_genes: int = 20,
    r2_de_k: int = 50,
    de_method: Literal["t-test", "wilcoxon", "t-test_overestim_var"] = "t-test",
    fdr_threshold: float = 0.05,
    n_pcs: int = 30,
    cache_de: bool = True,
) -> pd.DataFrame:
    """Score predicted perturbation responses against the real cells, one row per perturbation.

    Profiles are compared as means of log-normalized expression; Δ = mean − mean of the real control cells of
    the same covariate. Genes are aligned by name (the metrics use the genes both objects share).

    Parameters
    ----------
    adata
        Real cells: every perturbation in ``predicted`` and the control cells (of each covariate value).
    predicted
        Predictions: one profile per condition (e.g. from ``model.get_perturbation_profiles``) or predicted
        cells, with ``obs[perturbation_key]`` (and ``obs[covariate_key]``). Predicted control cells (more than
        one row), if present, are the controls of the predicted DE and Δ in ``des``/``pds`` (as in cell-eval);
        otherwise the real controls are used. A single profile is repeated to the number of real cells for
        ``des`` (as cell-eval's baseline does).
    perturbation_key
        ``obs`` column of perturbation labels in both objects.
    control
        Control label (must occur in ``adata``).
    covariate_key
        Optional ``obs`` column (cell line, cell type) in both objects; controls are matched within it.
    metrics
        Subset of :data:`PERTURBATION_METRICS` (default: all). ``energy_distance`` and ``mmd`` need predicted
        cells (NaN for a single profile).
    layer, predicted_layer
        Layers holding the expression (``None`` = ``X``).
    scale
        Declare both inputs log-normalized. May be omitted when ``adata.uns['log1p']`` exists (scanpy) and the
        predictions declare it (``uns['scale']`` of profiles, ``uns[predicted_layer]['params']['scale']`` of
        ``predict`` output).
    n_de_genes
        Number of top DE genes of the ``*_de20`` metrics.
    r2_de_k
        Number of top DE genes of ``r2_mean_de``.
    de_method
        ``scanpy.tl.rank_genes_groups`` method of the DE ranking (GEARS uses the default t-test).
    fdr_threshold
        Significance level of ``des``.
    n_pcs
        Dimensions of the PCA (fitted on the real cells) in which ``energy_distance`` and ``mmd`` are computed.
    cache_de
        Cache the DE ranking in ``adata.uns`` (it is reused by later calls with the same parameters).

    Returns
    -------
    DataFrame indexed by perturbation (``"pert|covariate"`` with a covariate), with columns
    ``perturbation_key`` (and ``covariate_key``), ``n_cells`` (real cells) and one column per metric.
    ``df.attrs["vcc_score"]`` holds the aggregate Virtual Cell Challenge score (metrics averaged, then scaled
    against the mean-of-perturbation-means baseline), ``df.attrs["n_genes"]`` the number of genes compared.
    When ``cache_de`` is true, ``adata.uns['_scpredict_de_genes']`` (JSON ranking + parameters) is written
    after a successful evaluation; nothing is written when a check fails.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=400, n_genes=30, n_perturbations=4)
    >>> sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.MeanBaseline(adata)
    >>> model.train()
    >>> pred = model.get_perturbation_profiles(["P0", "P1"])
    >>> df = sp.tl.evaluate_perturbations(
    ...     adata, pred, perturbation_key="perturbation", metrics=["mae", "pearson_delta"], scale="log1p"
    ... )
    >>> list(df.columns)
    ['perturbation', 'n_cells', 'mae', 'pearson_delta']
    """
    wanted = list(PERTURBATION_METRICS if metrics is None else metrics)
    unknown = sorted(set(wanted) - set(PERTURBATION_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(PERTURBATION_METRICS)}.")
    cov_keys = [covariate_key] if covariate_key else []
    check_keys(adata, obs=[perturbation_key, *cov_keys])
    check_keys(predicted, obs=[perturbation_key, *cov_keys])
    _check_scale(adata, layer=layer, scale=scale, what="adata (the real cells)")
    _check_scale(predicted, layer=predicted_layer, scale=scale, what="predicted")

    # ---- genes
    genes = adata.var_names.intersection(predicted.var_names, sort=False)
    if len(genes) == 0:
        raise ValueError(
            f"adata and predicted share no gene names (adata e.g. {adata.var_names[:5].tolist()}, predicted e.g. "
            f"{predicted.var_names[:5].tolist()}); align them to the same gene identifiers."
        )
    if not adata.var_names.is_unique or not predicted.var_names.is_unique:
        raise ValueError("gene names must be unique in adata and predicted (var_names_make_unique()).")
    gi = adata.var_names.get_indexer(genes)
    pi = predicted.var_names.get_indexer(genes)
    x = _dense(get_array(adata, layer=layer))[:, gi]
    xp = _dense(get_array(predicted, layer=predicted_layer))[:, pi]

    # ---- conditions
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    covs = adata.obs[covariate_key].astype(str).to_numpy() if covariate_key else np.full(adata.n_obs, "")
    plabels = predicted.obs[perturbation_key].astype(str).to_numpy()
    pcovs = (
        predicted.obs[covariate_key].astype(str).to_numpy() if covariate_key else np.full(predicted.n_obs, "")
    )
    if control not in set(labels):
        raise ValueError(
            f"control label {control!r} does not occur in adata.obs[{perturbation_key!r}]; the real control cells "
            "are needed (pass control=<label> or include them)."
        )
    real_conds = set(zip(labels, covs, strict=True))
    conditions = sorted({(p, c) for p, c in zip(plabels, pcovs, strict=True) if p != control})
    if not conditions:
        raise ValueError(f"predicted holds no perturbation other than the control {control!r}.")
    absent = [f"{p}|{c}" if c else p for p, c in conditions if (p, c) not in real_conds]
    if absent:
        raise ValueError(
            f"{len(absent)} predicted perturbation(s) have no real cells in adata: {absent[:10]}; evaluate only "
            "perturbations measured in adata (e.g. the test split)."
        )
    no_ctrl = sorted({c for _, c in conditions if (control, c) not in real_conds})
    if no_ctrl:
        raise ValueError(
            f"no real control cells for {covariate_key}={no_ctrl[:5]}; each covariate needs controls."
        )
    if not np.isfinite(xp).all():
        bad = ~np.isfinite(xp)
        cols = genes[bad.any(0)][:5].tolist()
        raise ValueError(
            f"predicted contains {int(bad.sum())} NaN/inf values (genes e.g. {cols}); subset predicted to the genes "
            "the model predicts (NaN marks genes it does not know) or fix the model output."
        )

    def real_rows(p: str, c: str) -> np.ndarray:
        return np.flatnonzero((labels == p) & (covs == c))

    def pred_rows(p: str, c: str) -> np.ndarray:
        return np.flatnonzero((plabels == p) & (pcovs == c))

    n_c = len(conditions)
    true_mean = np.stack([x[real_rows(p, c)].mean(0) for p, c in conditions])
    pred_mean = np.stack([xp[pred_rows(p, c)].mean(0) for p, c in conditions])
    ctrl_mean = {c: x[real_rows(control, c)].mean(0) for c in {c for _, c in conditions}}
    ctrl = np.stack([ctrl_mean[c] for _, c in conditions])
    n_true = np.array([len(real_rows(p, c)) for p, c in conditions])
    n_pred = np.array([len(pred_rows(p, c)) for p, c in conditions])

    res: dict[str, np.ndarray] = {}
    new_cache = None
    if set(wanted) & _DE_METRICS:
        params = {
            "perturbation_key": perturbation_key,
            "covariate_key": covariate_key,
            "control": control,
            "layer": layer,
            "method": de_method,
            "n_ranked": int(max(n_de_genes, r2_de_k, 100)),
            "n_obs": int(adata.n_obs),
            "genes": int(adata.n_vars),
        }
        ranking, new_cache = _de_genes(
            adata,
            _dense(get_array(adata, layer=layer)),
            labels=labels,
            covs=covs,
            conditions=conditions,
            params=params,
        )
        gpos = pd.Index(genes)
        de_idx = []
        for p, c in conditions:
            names = ranking.get(f"{p}|{c}")
            if names is None:
                raise ValueError(
                    f"cannot rank DE genes of {p!r}: it (or its control) has fewer than 2 real cells."
                )
            pos = gpos.get_indexer(names)
            de_idx.append(pos[pos >= 0])
        if "mse_de20" in wanted:
            res["mse_de20"] = M.mse_de20(pred_mean, true_mean, de_genes=de_idx, n_genes=n_de_genes)
        if "pearson_delta_de20" in wanted:
            res["pearson_delta_de20"] = M.pearson_delta_de20(
                pred_mean, true_mean, ctrl, de_genes=de_idx, n_genes=n_de_genes
            )
        if "r2_mean_de" in wanted:
            res["r2_mean_de"] = M.r2_mean_de(pred_mean, true_mean, de_genes=de_idx, k=r2_de_k)
        if "direction_de20" in wanted:
            res["direction_de20"] = M.direction_de20(
                pred_mean, true_mean, ctrl, de_genes=de_idx, n_genes=n_de_genes
            )
    if "mse" in wanted:
        res["mse"] = M.mse(pred_mean, true_mean)
    if "mae" in wanted:
        res["mae"] = M.mae(pred_mean, true_mean)
    if "pearson" in wanted:
        res["pearson"] = M.pearson(pred_mean, true_mean)
    if "pearson_delta" in wanted:
        res["pearson_delta"] = M.pearson_delta(pred_mean, true_mean, ctrl)
    if "r2_mean" in wanted:
        res["r2_mean"] = M.r2_mean(pred_mean, true_mean)
    if "r2_scgen" in wanted:
        res["r2_scgen"] = M.r2_scgen(pred_mean, true_mean)
    if "l2_top1000" in wanted:
        res["l2_top1000"] = M.l2_top1000(pred_mean, true_mean, ctrl)

    # ---- cell-eval metrics (des, pds; vcc_score scales them and mae against the mean baseline)
    aggregate = None
    if set(wanted) & _CELLEVAL:
        # predicted controls count only as cells (> 1 row); a single control profile is not a population
        pred_has_ctrl = {c for c in set(pcovs) if len(pred_rows(control, c)) > 1}

        def pred_ctrl_cells(c: str) -> np.ndarray:
            return xp[pred_rows(control, c)] if c in pred_has_ctrl else x[real_rows(control, c)]

        def pred_cells(i: int, p: str, c: str) -> np.ndarray:
            cells = xp[pred_rows(p, c)]
            return np.repeat(cells, n_true[i], axis=0) if len(cells) == 1 else cells

        pctrl_mean = np.stack([pred_ctrl_cells(c).mean(0) for _, c in conditions])
        exclude = np.stack([np.asarray(genes) == p for p, _ in conditions])
        true_de = {}

        def des_scores(
            make_cells: Callable[[int, str, str], np.ndarray], ctrl_of: Callable[[str], np.ndarray]
        ):
            out = np.empty(n_c)
            for i, (p, c) in enumerate(conditions):
                if i not in true_de:
                    true_de[i] = M.wilcoxon_de(x[real_rows(p, c)], x[real_rows(control, c)])
                out[i] = M.des(
                    true_de[i], M.wilcoxon_de(make_cells(i, p, c), ctrl_of(c)), fdr_threshold=fdr_threshold
                )
            return out

        def pds_scores(pmean: np.ndarray, pctrl: np.ndarray) -> np.ndarray:
            out = np.empty(n_c)
            for c in sorted({c for _, c in conditions}):
                rows = np.array([i for i, (_, cc) in enumerate(conditions) if cc == c])
                out[rows] = M.pds(
                    pmean[rows] - pctrl[rows], true_mean[rows] - ctrl[rows], exclude=exclude[rows]
                )
            return out

        des_v = (
            des_scores(pred_cells, pred_ctrl_cells) if ("des" in wanted or "vcc_score" in wanted) else None
        )
        pds_v = pds_scores(pred_mean, pctrl_mean) if ("pds" in wanted or "vcc_score" in wanted) else None
        if "des" in wanted:
            res["des"] = des_v
        if "pds" in wanted:
            res["pds"] = pds_v
        if "vcc_score" in wanted:
            base = np.empty_like(true_mean)
            for c in sorted({c for _, c in conditions}):
                rows = [i for i, (_, cc) in enumerate(conditions) if cc == c]
                base[rows] = true_mean[rows].mean(0)
            real_ctrl = lambda c: x[real_rows(control, c)]  # noqa: E731
            base_des = des_scores(lambda i, p, c: np.repeat(base[i][None], n_true[i], axis=0), real_ctrl)
            base_pds = pds_scores(base, ctrl)
            base_mae = M.mae(base, true_mean)
            pmae = M.mae(pred_mean, true_mean)
            res["vcc_score"] = np.array(
                [
                    M.vcc_score(
                        des=des_v[i],
                        pds=pds_v[i],
                        mae=pmae[i],
                        des_baseline=base_des[i],
                        pds_baseline=base_pds[i],
                        mae_baseline=base_mae[i],
                    )
                    for i in range(n_c)
                ]
            )
            aggregate = M.vcc_score(
                des=des_v,
                pds=pds_v,
                mae=pmae,
                des_baseline=base_des,
                pds_baseline=base_pds,
                mae_baseline=base_mae,
            )

    # ---- distribution metrics in a PCA of the real cells
    if set(wanted) & _DISTRIBUTION:
        keep = np.isin(labels, [p for p, _ in conditions] + [control])
        fit = x[keep]
        k = int(max(1, min(n_pcs, fit.shape[0] - 1, fit.shape[1])))
        mu = fit.mean(0)
        _, _, vt = np.linalg.svd(fit - mu, full_matrices=False)
        comps = vt[:k].T
        ed, mm = np.full(n_c, np.nan), np.full(n_c, np.nan)
        for i, (p, c) in enumerate(conditions):
            if n_pred[i] < 2:
                continue
            a = (xp[pred_rows(p, c)] - mu) @ comps
            b = (x[real_rows(p, c)] - mu) @ comps
            ed[i] = M.energy_distance(a, b)
            mm[i] = M.mmd(a, b)
        if "energy_distance" in wanted:
            res["energy_distance"] = ed
        if "mmd" in wanted:
            res["mmd"] = mm

    index = [f"{p}|{c}" if covariate_key else p for p, c in conditions]
    table = pd.DataFrame(
        {perturbation_key: [p for p, _ in conditions]}, index=pd.Index(index, name="condition")
    )
    if covariate_key:
        table[covariate_key] = [c for _, c in conditions]
    table["n_cells"] = n_true
    for m in wanted:
        table[m] = np.asarray(res[m], dtype=np.float64)
    table.attrs["n_genes"] = int(len(genes))
    if aggregate is not None:
        table.attrs["vcc_score"] = float(aggregate)
    if cache_de and new_cache is not None:
        adata.uns[DE_CACHE_KEY] = new_cache
    return table


def _fit_model(spec: Any, train: AnnData, setup: dict[str, Any]):
    """Build and train one model from a class, ``(class, init_kwargs[, train_kwargs])`` or a factory."""
    from ..models._perturbation_base import PerturbationModel

    if isinstance(spec, tuple):
        cls, init_kwargs, *rest = spec
        train_kwargs = rest[0] if rest else {}
    else:
        cls, init_kwargs, train_kwargs = spec, {}, {}
    if isinstance(cls, type) and issubclass(cls, PerturbationModel):
        cls.setup_anndata(train, **setup)
        model = cls(train, **dict(init_kwargs))
        model.train(**dict(train_kwargs))
        return model
    if callable(cls):
        model = cls(train)
        if not isinstance(model, PerturbationModel):
            raise TypeError(f"the model factory returned {type(model).__name__}, not a PerturbationModel.")
        if not model.is_trained_:
            model.train()
        return model
    raise TypeError(
        f"cannot build a model from {spec!r}: pass a PerturbationModel class, (class, kwargs) or a factory."
    )


def benchmark_perturbation_models(
    adata: AnnData,
    models: Mapping[str, Any],
    *,
    split_key: str,
    perturbation_key: str,
    control: str = "control",
    covariate_key: str | None = None,
    layer: str | None = None,
    metrics: Sequence[str] | None = None,
    train_splits: Sequence[str] = ("train", "val"),
    test_split: str = "test",
    scale: Literal["log1p"] | None = None,
    reference_controls: Literal["all", "test"] = "all",
    save_dir: str | Path | None = None,
    **evaluate_kwargs: Any,
) -> pd.DataFrame:
    """Train every model on the training split and score its predictions of the held-out perturbations.

    Parameters
    ----------
    adata
        All cells, with a split column (e.g. from :func:`scpredict.pp.split_combinations`). Not modified.
    models
        Name → model: a :class:`~scpredict.models.PerturbationModel` subclass (set up and trained with defaults),
        a tuple ``(class, init_kwargs)`` or ``(class, init_kwargs, train_kwargs)``, or a factory
        ``f(train_adata) -> model`` (trained inside, or trained here with defaults).
    split_key
        ``obs`` column of split labels.
    perturbation_key, control, covariate_key, layer
        As in :func:`evaluate_perturbations`; also passed to ``setup_anndata``.
    metrics
        Metrics to compute (default: all).
    train_splits
        Split labels used for training.
    test_split
        Split label of the held-out perturbations.
    scale
        Declare the data log-normalized (see :func:`evaluate_perturbations`).
    reference_controls
        Control cells the held-out truth is compared with (Δ, DE): ``"all"`` control cells (default, as GEARS;
        controls are not a prediction target, and a small held-out control set adds noise that is shared by
        every Δ, which inflates Δ correlations of a no-change prediction); the models are then trained with all
        control cells too, so that truth and prediction share one control reference. ``"test"``: only the
        control cells of the ``test_split`` (all of them when it has none), models trained on the others.
    save_dir
        Folder where ``results.csv`` and ``split.json`` (the explicit train / test perturbation lists) are
        written, so that any number can be reproduced.
    **evaluate_kwargs
        Passed to :func:`evaluate_perturbations`.

    Returns
    -------
    Tidy DataFrame with columns ``model``, ``perturbation`` (``condition``), ``metric``, ``value``; a
    perturbation a model cannot predict (e.g. an unseen single for the additive baseline) gets NaN values and is
    listed in ``df.attrs["unsupported"][model]``. ``df.attrs["split"]`` holds the perturbation lists and
    ``df.attrs["vcc_score"]`` the aggregate score per model.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=600, n_genes=30, n_perturbations=5, n_combinations=4)
    >>> sp.pp.split_combinations(adata, test_fraction=0.5, seed=0)
    >>> df = sp.tl.benchmark_perturbation_models(
    ...     adata,
    ...     {"mean": sp.models.MeanBaseline, "additive": sp.models.AdditiveBaseline},
    ...     split_key="split", perturbation_key="perturbation", metrics=["mae"], scale="log1p",
    ... )
    >>> sorted(df["model"].unique())
    ['additive', 'mean']
    """
    check_keys(adata, obs=[split_key, perturbation_key] + ([covariate_key] if covariate_key else []))
    split = adata.obs[split_key].astype(str).to_numpy()
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    is_train = np.isin(split, list(train_splits))
    is_test = split == test_split
    if not is_train.any() or not is_test.any():
        raise ValueError(
            f"adata.obs[{split_key!r}] needs cells labelled {list(train_splits)} and {test_split!r} "
            f"(found {sorted(set(split))})."
        )
    test_perts = sorted(set(labels[is_test]) - {control})
    if not test_perts:
        raise ValueError(f"the {test_split!r} split holds no perturbed cells.")
    ctrl = labels == control
    if reference_controls not in ("all", "test"):
        raise ValueError(f"reference_controls must be 'all' or 'test', got {reference_controls!r}.")
    ref_ctrl = ctrl & is_test if reference_controls == "test" and (ctrl & is_test).any() else ctrl
    if reference_controls == "all":
        is_train = is_train | ctrl  # controls are an input, not a prediction target: models see all of them
    truth = adata[(is_test & ~ctrl) | ref_ctrl].copy()
    train = adata[is_train].copy()
    for a in (truth, train):
        if scale == "log1p":
            a.uns["scale"] = "log1p"
    setup = {"perturbation_key": perturbation_key, "control": control, "layer": layer}
    if covariate_key:
        setup["covariate_keys"] = [covariate_key]
    tcov = truth.obs[covariate_key].astype(str).to_numpy() if covariate_key else None
    tlab = truth.obs[perturbation_key].astype(str).to_numpy()
    conds = sorted({(p, tcov[i] if tcov is not None else "") for i, p in enumerate(tlab) if p != control})
    rows, unsupported, vcc = [], {}, {}
    for name, spec in models.items():
        model = _fit_model(spec, train.copy(), setup)
        bad = set(model._unsupported([p for p, _ in conds]))
        ok = [(p, c) for p, c in conds if p not in bad]
        unsupported[name] = sorted(bad)
        if ok:
            cov_arg = {covariate_key: [c for _, c in ok]} if covariate_key else None
            profiles = model.get_perturbation_profiles([p for p, _ in ok], covariates=cov_arg)
            profiles.uns["scale"] = "log1p"
            table = evaluate_perturbations(
                truth,
                profiles,
                perturbation_key=perturbation_key,
                control=control,
                covariate_key=covariate_key,
                metrics=metrics,
                layer=layer,
                scale=scale,
                **evaluate_kwargs,
            )
            vcc[name] = table.attrs.get("vcc_score", np.nan)
            mcols = [c for c in table.columns if c in PERTURBATION_METRICS]
            long = table[mcols].reset_index().melt(id_vars="condition", var_name="metric", value_name="value")
            long.insert(0, "model", name)
            rows.append(long)
        for p, c in conds:
            if p in bad:
                cond = f"{p}|{c}" if covariate_key else p
                for m in metrics or PERTURBATION_METRICS:
                    rows.append(
                        pd.DataFrame({"model": [name], "condition": [cond], "metric": [m], "value": [np.nan]})
                    )
    out = pd.concat(rows, ignore_index=True).rename(columns={"condition": "perturbation"})
    train_perts = sorted(set(labels[is_train]) - {control})
    out.attrs["split"] = {"train": train_perts, "test": test_perts, "split_key": split_key}
    out.attrs["unsupported"] = unsupported
    out.attrs["vcc_score"] = vcc
    if save_dir is not None:
        path = Path(save_dir)
        path.mkdir(parents=True, exist_ok=True)
        out.to_csv(path / "results.csv", index=False)
        (path / "split.json").write_text(json.dumps(out.attrs["split"], indent=1))
    return out
