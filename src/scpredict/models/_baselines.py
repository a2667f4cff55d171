"""Simple perturbation baselines that every deep model is judged beside.

In this field deep models often fail to beat a mean or additive baseline (Ahlmann-Eltze, Huber & Anders,
Nat Methods 2025, "Deep-learning-based gene perturbation effect prediction does not yet outperform simple
linear baselines"; GEARS issue #82). The four baselines share the :class:`PerturbationModel` API, train in
milliseconds without torch, and save their fitted arrays with safetensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._perturbation_base import PERTURBATION_REGISTRY_KEY, PerturbationModel

__all__ = ["ControlBaseline", "MeanBaseline", "AdditiveBaseline", "LinearBaseline"]


class _MeanTableBaseline(PerturbationModel):
    """Shared machinery: per-condition training means, control means per covariate, Δ look-ups."""

    _uses_torch = False

    @staticmethod
    def _seed_everything() -> None:
        """Nothing random to seed (and no need to import Lightning): the baselines are deterministic."""

    def __init__(self, adata: AnnData, **init_params: Any) -> None:
        super().__init__(adata, **init_params)
        self.conditions_: pd.DataFrame | None = None

    # ---------------------------------------------------------------- training
    def train(self, *, train_indices: Sequence[int] | None = None) -> None:
        """Compute the per-condition means of the training cells.

        Parameters
        ----------
        train_indices
            Integer positions of the training cells in the registered AnnData (default: all cells).
        """
        if self.adata is None:
            raise ValueError("this model was loaded without its training AnnData; pass adata to load().")
        conditions, means, n = self._condition_means(self.adata, train_indices)
        is_ctrl = conditions[PERTURBATION_REGISTRY_KEY] == self.control
        if not is_ctrl.any():
            raise ValueError(f"the training cells contain no control cells ({self.control!r}).")
        self.conditions_ = conditions
        self._cache = None
        self.extra_arrays_["means"] = means
        self.extra_arrays_["n_cells"] = n.astype(np.float64)
        self._fit()
        self.is_trained_ = True
        self.train_params_ = {
            "n_train": int(n.sum()),
            "n_conditions": int(len(conditions)),
        }

    def _fit(self) -> None:
        """Fit model-specific arrays from ``conditions_`` / ``extra_arrays_['means']`` (default: nothing)."""

    # ---------------------------------------------------------------- look-ups
    def _cov(self, row: Mapping[str, Any] | pd.Series) -> tuple[str, ...]:
        return tuple(str(row[k]) for k in self.covariate_keys)

    def _tables(self) -> dict[str, Any]:
        """Cached look-up tables: control mean per covariate tuple, Δ of every perturbed training condition."""
        cache = getattr(self, "_cache", None)
        if cache is not None:
            return cache
        assert self.conditions_ is not None
        perts = self.conditions_[PERTURBATION_REGISTRY_KEY].astype(str).tolist()
        covs = [self._cov(r) for _, r in self.conditions_.iterrows()]
        means = self.extra_arrays_["means"]
        ctrl = {c: means[i] for i, (p, c) in enumerate(zip(perts, covs, strict=True)) if p == self.control}
        keep = [i for i, p in enumerate(perts) if p != self.control]
        deltas = np.stack([means[i] - ctrl[covs[i]] for i in keep]) if keep else np.zeros((0, self.n_vars))
        self._cache = {
            "control": ctrl,
            "perts": [perts[i] for i in keep],
            "covs": [covs[i] for i in keep],
            "deltas": deltas,
        }
        return self._cache

    def _control_mean(self, cov: tuple[str, ...]) -> np.ndarray:
        ctrl = self._tables()["control"]
        if cov not in ctrl:
            raise ValueError(
                f"no training control cells for covariates {dict(zip(self.covariate_keys, cov, strict=True))}."
            )
        return ctrl[cov]

    def _deltas(self) -> tuple[list[str], list[tuple[str, ...]], np.ndarray]:
        """Δ of every non-control training condition against the control of its covariates."""
        t = self._tables()
        return t["perts"], t["covs"], t["deltas"]

    def _single_delta(self, target: str, cov: tuple[str, ...]) -> np.ndarray:
        """Training Δ of the single perturbation ``target`` in ``cov`` (mean over covariates where it was not
        measured in ``cov``)."""
        perts, covs, deltas = self._deltas()
        same = [i for i, (p, c) in enumerate(zip(perts, covs, strict=True)) if p == target and c == cov]
        if same:
            return deltas[same[0]]
        anywhere = [i for i, p in enumerate(perts) if p == target]
        return deltas[anywhere].mean(0)

    def _seen_singles(self) -> set[str]:
        perts, _, _ = self._deltas()
        return {p for p in perts if len(self.targets(p)) == 1}

    # ---------------------------------------------------------------- persistence
    def _extra_metadata(self) -> dict[str, Any]:
        if self.conditions_ is None:
            return {}
        return {"conditions": {c: self.conditions_[c].astype(str).tolist() for c in self.conditions_.columns}}

    def _set_extra_metadata(self, meta: Mapping[str, Any]) -> None:
        self.conditions_ = pd.DataFrame(meta["conditions"]) if "conditions" in meta else None
        self._cache = None


class ControlBaseline(_MeanTableBaseline):
    """Predict no change: every perturbation gets the mean control profile of its covariates.

    The floor any model must clear; Δ-based metrics (Pearson Δ) are undefined for it (its Δ is zero).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (log-normalized expression).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=300, n_genes=30)
    >>> sp.models.ControlBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.ControlBaseline(adata)
    >>> model.train()
    >>> model.get_perturbation_profiles(["P1", "P2+P5"]).shape
    (2, 30)
    """

    def __init__(self, adata: AnnData) -> None:
        super().__init__(adata)

    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        return []

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        return np.stack([self._control_mean(self._cov(r)) for _, r in conditions.iterrows()])


class MeanBaseline(_MeanTableBaseline):
    """Predict the mean training effect: control + mean Δ of the training perturbations (same covariates).

    Equivalent to the mean of the training perturbation means for one covariate value; the "training mean"
    baseline of GEARS issue #82 and the mean-of-perturbation-means baseline of the Virtual Cell Challenge.
    Covariate values without training perturbations use the mean Δ over all covariates.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (log-normalized expression).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=300, n_genes=30)
    >>> sp.models.MeanBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.MeanBaseline(adata)
    >>> model.train()
    >>> model.get_perturbation_profiles(["P1"]).n_vars
    30
    """

    def __init__(self, adata: AnnData) -> None:
        super().__init__(adata)

    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        return []

    def _fit(self) -> None:
        _, _, deltas = self._deltas()
        if len(deltas) == 0:
            raise ValueError("the training cells contain no perturbed cells; MeanBaseline needs some.")

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        _, covs, deltas = self._deltas()
        out = []
        for _, r in conditions.iterrows():
            cov = self._cov(r)
            ctrl = self._control_mean(cov)
            if r[PERTURBATION_REGISTRY_KEY] == self.control:
                out.append(ctrl)
                continue
            rows = [i for i, c in enumerate(covs) if c == cov]
            out.append(ctrl + (deltas[rows] if rows else deltas).mean(0))
        return np.stack(out)


class AdditiveBaseline(_MeanTableBaseline):
    """Control + the sum of the single-perturbation effects: Δ(A+B) = Δ(A) + Δ(B).

    Single perturbations seen in training get their own training mean; a combination of singles seen in
    training gets the sum of their effects (even if the combination itself was in training), clipped at 0
    (log-normalized expression is non-negative). This is the additive model of Norman et al. (Science 2019)
    and Ahlmann-Eltze et al. (Nat Methods 2025).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (log-normalized expression).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=400, n_genes=30, n_perturbations=4)
    >>> sp.models.AdditiveBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.AdditiveBaseline(adata)
    >>> model.train()
    >>> model.get_perturbation_profiles(["P0+P3"]).shape
    (1, 30)
    """

    def __init__(self, adata: AnnData) -> None:
        super().__init__(adata)

    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        singles = self._seen_singles()
        return sorted({p for p in perturbations if p != self.control and not set(self.targets(p)) <= singles})

    def _unsupported_hint(self) -> str:
        return (
            "AdditiveBaseline predicts the control, seen single perturbations and combinations whose every "
            f"target was seen as a single in training (seen singles: {sorted(self._seen_singles())[:15]})."
        )

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        out = []
        for _, r in conditions.iterrows():
            cov = self._cov(r)
            prof = self._control_mean(cov).copy()
            for t in self.targets(str(r[PERTURBATION_REGISTRY_KEY])):
                prof = prof + self._single_delta(t, cov)
            out.append(np.clip(prof, 0.0, None))
        return np.stack(out)


class LinearBaseline(_MeanTableBaseline):
    """Ridge-regularised bilinear model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025).

    With Y the training Δ profiles (conditions × genes) and b their mean, the model is

    .. math:: Y - b \\approx P\\,W^\\top G^\\top, \\qquad
              W = (G^\\top G + \\lambda I)^{-1} G^\\top (Y - b)^\\top P (P^\\top P + \\lambda I)^{-1}

    where G (genes × K) holds the top-K principal axes of Y - b (the gene embedding) and P (conditions × d)
    the perturbation embedding. A condition's embedding is the sum of its targets' embeddings (0 for the
    control), so combinations of embedded targets can be predicted. Prediction: control mean (same
    covariates) + b + G W p, clipped at 0.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (log-normalized expression).
    n_components
        K, the dimension of the PCA gene embedding (and of the training perturbation embedding).
    ridge_lambda
        λ, the ridge penalty.
    perturbation_embedding
        ``"training"``: a target's embedding is the projection of its training single-perturbation Δ on the
        K principal axes (predicts seen singles and combinations of seen singles). ``"gene"``: the row of G
        of the target gene, as in the paper (targets must be genes of the data; predicts unseen singles).
        A DataFrame (index = target names, columns = dimensions): external embeddings (e.g. GO or language
        model gene embeddings).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=400, n_genes=30, n_perturbations=4)
    >>> sp.models.LinearBaseline.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.LinearBaseline(adata, n_components=3)
    >>> model.train()
    >>> model.get_perturbation_profiles(["P0+P3"]).shape
    (1, 30)
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        n_components: int = 10,
        ridge_lambda: float = 0.1,
        perturbation_embedding: Literal["training", "gene"] | pd.DataFrame = "training",
    ) -> None:
        external = isinstance(perturbation_embedding, pd.DataFrame)
        if not external and perturbation_embedding not in ("training", "gene"):
            raise ValueError(
                f"perturbation_embedding must be 'training', 'gene' or a DataFrame, got {perturbation_embedding!r}"
            )
        if n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        if ridge_lambda < 0:
            raise ValueError(f"ridge_lambda must be >= 0, got {ridge_lambda}")
        super().__init__(
            adata,
            n_components=n_components,
            ridge_lambda=ridge_lambda,
            perturbation_embedding="external" if external else perturbation_embedding,
        )
        self.embedding_targets_: list[str] = []
        if external:
            emb = perturbation_embedding
            if emb.isna().to_numpy().any():
                raise ValueError("perturbation_embedding contains NaN values.")
            self.embedding_targets_ = [str(i) for i in emb.index]
            self.extra_arrays_["target_embedding"] = emb.to_numpy(dtype=np.float64)

    # ---------------------------------------------------------------- fit
    def _fit(self) -> None:
        perts, _, deltas = self._deltas()
        if len(deltas) < 2:
            raise ValueError("LinearBaseline needs at least two perturbed training conditions.")
        k = int(min(self.init_params_["n_components"], len(deltas) - 1, self.n_vars))
        b = deltas.mean(0)
        yc = deltas - b
        _, _, vt = np.linalg.svd(yc, full_matrices=False)
        g = vt[:k].T  # genes x K
        mode = self.init_params_["perturbation_embedding"]
        if mode == "training":
            singles = [(i, p) for i, p in enumerate(perts) if len(self.targets(p)) == 1]
            names = sorted({p for _, p in singles})
            scores = yc @ g
            emb = (
                np.stack([scores[[i for i, p in singles if p == n]].mean(0) for n in names])
                if names
                else None
            )
            self.embedding_targets_ = names
            if emb is None:
                raise ValueError("perturbation_embedding='training' needs single perturbations in training.")
            self.extra_arrays_["target_embedding"] = emb
        elif mode == "gene":
            self.embedding_targets_ = list(self.var_names_)
            self.extra_arrays_["target_embedding"] = g
        self.extra_arrays_["gene_embedding"] = g
        self.extra_arrays_["offset"] = b
        rows = [i for i, p in enumerate(perts) if self._embeddable(p)]
        if len(rows) < 2:
            raise ValueError(
                "fewer than two training perturbations have embeddings for all their targets; check "
                "perturbation_embedding."
            )
        p_mat = np.stack([self._embed(perts[i]) for i in rows])
        lam = float(self.init_params_["ridge_lambda"])
        left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ yc[rows].T)  # K x n
        w = np.linalg.solve((p_mat.T @ p_mat + lam * np.eye(p_mat.shape[1])).T, (left @ p_mat).T).T
        self.extra_arrays_["weights"] = w  # K x d

    def _embeddable(self, perturbation: str) -> bool:
        known = set(self.embedding_targets_)
        return all(t in known for t in self.targets(perturbation))

    def _embed(self, perturbation: str) -> np.ndarray:
        emb = self.extra_arrays_["target_embedding"]
        index = {t: i for i, t in enumerate(self.embedding_targets_)}
        vec = np.zeros(emb.shape[1])
        for t in self.targets(perturbation):
            vec = vec + emb[index[t]]
        return vec

    # ---------------------------------------------------------------- predict
    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        return sorted({p for p in perturbations if not self._embeddable(p)})

    def _unsupported_hint(self) -> str:
        mode = self.init_params_["perturbation_embedding"]
        return (
            f"LinearBaseline (perturbation_embedding={mode!r}) predicts perturbations whose every target has an "
            f"embedding (e.g. {self.embedding_targets_[:10]}); pass perturbation_embedding='gene' (targets that "
            "are genes of the data) or a DataFrame of external embeddings to cover more."
        )

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        g = self.extra_arrays_["gene_embedding"]
        w = self.extra_arrays_["weights"]
        b = self.extra_arrays_["offset"]
        out = []
        for _, r in conditions.iterrows():
            pert = str(r[PERTURBATION_REGISTRY_KEY])
            ctrl = self._control_mean(self._cov(r))
            if pert == self.control:
                out.append(ctrl)
                continue
            out.append(np.clip(ctrl + b + g @ (w @ self._embed(pert)), 0.0, None))
        return np.stack(out)

    # ---------------------------------------------------------------- persistence
    def _extra_metadata(self) -> dict[str, Any]:
        return {**super()._extra_metadata(), "embedding_targets": list(self.embedding_targets_)}

    def _set_extra_metadata(self, meta: Mapping[str, Any]) -> None:
        super()._set_extra_metadata(meta)
        self.embedding_targets_ = list(meta.get("embedding_targets", []))
