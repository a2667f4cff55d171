"""Multinomial logistic regression (scikit-learn), scTab's logistic-regression baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from anndata import AnnData

from ._base import BaseModel
from ._classifier import ClassifierMixin, InputScale, log_normalize, setup_classifier

__all__ = ["LogisticRegressionClassifier"]


class LogisticRegressionClassifier(ClassifierMixin, BaseModel):
    """L2-regularised multinomial logistic regression on log-normalised expression.

    Fitted with scikit-learn's ``LogisticRegression`` (lbfgs); the fitted coefficients are stored as arrays
    (safetensors) and prediction is a matrix product followed by a softmax, so no scikit-learn object is
    pickled or needed at prediction time.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    C
        Inverse regularisation strength.
    max_iter
        Maximum lbfgs iterations.
    class_weight
        ``None`` or ``"balanced"`` (weights inversely proportional to class frequencies).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=50)
    >>> sp.models.LogisticRegressionClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = sp.models.LogisticRegressionClassifier(adata)
    >>> model.train()
    >>> model.predict(adata, key_added="logreg")
    >>> adata.obsm["logreg_proba"].shape
    (200, 4)
    """

    _default_key = "logreg"

    _uses_torch = False

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        labels_key: str,
        layer: str | None = None,
        embedding_key: str | None = None,
        scale: InputScale = "counts",
    ) -> None:
        """Register the expression layer and the cell-type labels.

        Parameters
        ----------
        adata
            Training data.
        labels_key
            ``obs`` column with the cell types.
        layer
            Expression layer (``None`` = ``X``, ``"raw"`` = ``adata.raw.X``).
        embedding_key
            Not used by this model (accepted for the common interface); must name an ``obsm`` key if given.
        scale
            Declared scale of ``layer``: ``"counts"`` (normalised to 10⁴ per cell + log1p by the model),
            ``"log1p"`` (used as is) or ``"any"``. Checked now and on every new AnnData.
        """
        setup_classifier(
            cls, adata, labels_key=labels_key, layer=layer, embedding_key=embedding_key, scale=scale
        )

    def __init__(
        self, adata: AnnData, *, C: float = 1.0, max_iter: int = 500, class_weight: str | None = None
    ) -> None:
        super().__init__(adata, C=C, max_iter=max_iter, class_weight=class_weight)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None

    def _features(self, prepared: Any):
        return log_normalize(prepared.adata.X, scale=self.setup_.scale)

    def train(self, *, train_indices: np.ndarray | None = None) -> None:
        """Fit on the registered cells.

        Parameters
        ----------
        train_indices
            Integer positions of the cells to fit on (default: all).
        """
        from sklearn.linear_model import LogisticRegression

        prepared = self._prepare(self.adata)
        idx = np.arange(prepared.n_obs) if train_indices is None else np.asarray(train_indices)
        x = self._features(prepared)[idx]
        y = prepared.adata.obs["labels"].to_numpy()[idx]
        p = self.init_params_
        clf = LogisticRegression(C=p["C"], max_iter=p["max_iter"], class_weight=p["class_weight"])
        clf.fit(x, y)
        n_classes = len(self.classes_)
        coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
        intercept = np.zeros(n_classes, dtype=np.float32)
        seen = clf.classes_
        if clf.coef_.shape[0] == 1:  # two classes seen: sklearn fits one row, the logit of the second one
            coef[seen[1]], intercept[seen[1]] = clf.coef_[0], clf.intercept_[0]
        else:
            coef[seen] = clf.coef_
            intercept[seen] = clf.intercept_
        intercept[np.setdiff1d(np.arange(n_classes), seen)] = -np.inf  # classes absent from the fit
        self.coef_, self.intercept_ = coef, intercept
        self.is_trained_ = True
        self.train_params_ = {"n_train": int(len(idx)), "n_iter": int(np.max(clf.n_iter_))}

    def _probabilities(self, prepared: Any, *, batch_size: int) -> np.ndarray:
        x = self._features(prepared)
        logits = np.asarray(x @ self.coef_.T) + self.intercept_
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def _get_state_arrays(self) -> dict[str, Any]:
        if self.coef_ is None:
            return {}
        return {"coef": torch.from_numpy(self.coef_), "intercept": torch.from_numpy(self.intercept_)}

    def _set_state_arrays(self, state: Any) -> None:
        self.coef_ = state["coef"].numpy() if "coef" in state else None
        self.intercept_ = state["intercept"].numpy() if "intercept" in state else None
