"""What every cell-type classifier shares: one setup, one ``predict``, input normalisation.

Used by :class:`~scpredict.models.LogisticRegressionClassifier`, :class:`~scpredict.models.XGBoostClassifier`,
:class:`~scpredict.models.LinearClassifier`, :class:`~scpredict.models.TabNetClassifier` and
:class:`~scpredict.models.ScoreClassifier` (composition: a mixin that needs only ``_probabilities``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._keys import confidence_key, proba_key
from .._utils import check_keys

__all__ = ["ClassifierMixin", "setup_classifier", "log_normalize", "UNKNOWN", "InputScale"]

#: label written for cells whose confidence is below ``min_confidence``
UNKNOWN = "unknown"
#: ``"counts"``: raw counts, normalised by the model to 10,000 per cell then log1p (scTab's preprocessing);
#: ``"log1p"``: already log-normalised, used as is; ``"any"``: used as is, only finiteness checked.
InputScale = Literal["counts", "log1p", "any"]
TARGET_SUM = 1e4


def setup_classifier(
    cls: Any,
    adata: AnnData,
    *,
    labels_key: str,
    layer: str | None,
    embedding_key: str | None,
    scale: InputScale,
) -> None:
    """Validate and record a classifier's inputs (shared body of every ``setup_anndata``)."""
    if scale not in ("counts", "log1p", "any"):
        msg = f"scale must be one of 'counts', 'log1p', 'any'; got {scale!r}."
        raise ValueError(msg)
    check_keys(adata, obs=[labels_key])
    n_classes = adata.obs[labels_key].astype(str).nunique()
    if n_classes < 2:
        msg = f"adata.obs[{labels_key!r}] holds {n_classes} class; a classifier needs at least two."
        raise ValueError(msg)
    if not getattr(cls, "_uses_embedding", False):
        embedding_key = None  # documented as not used by this model: neither checked nor required of queries
    if embedding_key is not None:
        from ._base import checked_obsm

        checked_obsm(adata, embedding_key)
    cls._setup(
        adata,
        layer=layer,
        scale=scale,
        categorical={"labels": labels_key},
        obsm={"embedding": embedding_key},
        extra={"labels_key": labels_key, "embedding_key": embedding_key},
    )


def log_normalize(x: Any, *, scale: str) -> Any:
    """``log1p(x / rowsum · 10⁴)`` for ``scale="counts"`` (numpy, scipy sparse or torch); otherwise ``x``."""
    if scale != "counts":
        return x
    if sp_sparse.issparse(x):
        x = sp_sparse.csr_matrix(x, dtype=np.float32)
        s = np.asarray(x.sum(axis=1)).ravel()
        x = sp_sparse.diags((TARGET_SUM / np.maximum(s, 1.0)).astype(np.float32)) @ x
        x.data = np.log1p(x.data)
        return x
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32, copy=False)
        s = x.sum(axis=1, keepdims=True)
        return np.log1p(x * (TARGET_SUM / np.maximum(s, 1.0)))
    import torch

    if not isinstance(x, torch.Tensor):
        msg = f"expected a numpy array, scipy sparse matrix or torch tensor, got {type(x).__name__}."
        raise TypeError(msg)
    return torch.log1p(x * (TARGET_SUM / x.sum(dim=1, keepdim=True).clamp_min(1.0)))


def training_class_counts(model: Any, train_kwargs: dict[str, Any]) -> np.ndarray:
    """Cells per class (in the order of ``model.classes_``) among the cells that ``BaseModel.train`` will
    train on with ``train_kwargs``: ``train_indices`` if given, else the same seeded random split
    (``train_size`` / ``validation_size``, ``sp.settings.seed``) that ``BaseModel.train`` draws — both go
    through ``BaseModel._train_split``."""
    if train_kwargs.get("data") is not None:
        msg = (
            "class frequencies of the training cells (class_weight / logit_adjustment) are only available "
            "when training on the model's AnnData, not with data=."
        )
        raise ValueError(msg)
    y = model._encode_categories(model.adata, ["labels"])["labels"]
    tr, _ = model._train_split(len(y), train_kwargs)
    return np.bincount(y[np.asarray(tr, dtype=np.int64)], minlength=len(model.vocab_["labels"])).astype(
        np.float64
    )


def check_logit_adjustment(tau: float) -> float:
    """``tau`` as a float, or a ``ValueError`` unless it is finite and ``>= 0``."""
    try:
        t = float(tau)
    except (TypeError, ValueError):
        t = float("nan")
    if not np.isfinite(t) or t < 0:
        msg = f"logit_adjustment must be a finite number >= 0, got {tau!r}."
        raise ValueError(msg)
    return t


def logit_adjustment_offset(counts: np.ndarray, tau: float) -> np.ndarray:
    """``τ · log π`` with the add-one smoothed class frequencies ``π_c = (n_c + 1) / (n + k)`` (``k``
    classes): the offsets added to the logits in the logit-adjusted loss (Menon et al. 2021)."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = (counts + 1.0) / (counts.sum() + len(counts))
    return float(tau) * np.log(prior)


def add_loss_kwargs(train_kwargs: dict[str, Any], **loss_kwargs: Any) -> None:
    """Merge ``loss_kwargs`` into ``train_kwargs["plan_kwargs"]["loss_kwargs"]`` (in place)."""
    plan = dict(train_kwargs.pop("plan_kwargs", None) or {})
    plan["loss_kwargs"] = {**plan.get("loss_kwargs", {}), **loss_kwargs}
    train_kwargs["plan_kwargs"] = plan


class ClassifierMixin:
    """``predict``/``get_probabilities`` for classifiers on :class:`~scpredict.models.BaseModel`.

    Subclasses implement ``_probabilities(prepared, *, batch_size) -> (n_cells, n_classes)`` in the order of
    :attr:`classes_`.
    """

    @property
    def classes_(self) -> list[str]:
        """Class labels, in the column order of the probabilities."""
        return list(self.vocab_["labels"])  # type: ignore[attr-defined]

    #: whether the model reads an ``obsm`` embedding (``setup_anndata(embedding_key=...)``); the others ignore it
    _uses_embedding: bool = False
    #: default ``key_added`` of :meth:`predict`
    _default_key: str = "classifier"

    def _input_keys(self) -> list[str]:
        uses = self._uses_embedding and "embedding" in self.setup_.obsm  # type: ignore[attr-defined]
        return ["X"] + (["embedding"] if uses else [])

    def _inference_keys(self) -> list[str]:
        return self._input_keys()

    def _check_trained(self) -> None:
        if not self.is_trained_:  # type: ignore[attr-defined]
            msg = f"this {type(self).__name__} is not trained; call .train() first."
            raise RuntimeError(msg)

    def _probabilities(self, prepared: Any, *, batch_size: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_probabilities(self, adata: AnnData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities of every cell (genes aligned by name; labels are not needed).

        Parameters
        ----------
        adata
            Cells to classify (default: the training AnnData).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_classes)`` array whose rows sum to one, columns in the order of :attr:`classes_`.
        """
        self._check_trained()
        prepared = self._prepare(adata, keys=self._input_keys())  # type: ignore[attr-defined]
        proba = np.asarray(self._probabilities(prepared, batch_size=batch_size), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str | None = None,
        min_confidence: float = 0.0,
        unknown_label: str = UNKNOWN,
        batch_size: int = 1024,
    ) -> None:
        """Predict the class of every cell.

        Parameters
        ----------
        adata
            Cells to classify (default: the training AnnData). Genes are aligned by name; the labels column
            is not needed.
        key_added
            Key used in every slot written (default per model: ``"logreg"``, ``"xgboost"``, ``"linear"``,
            ``"tabnet"``, ``"score"``).
        min_confidence
            Cells whose highest probability is below this get the label ``unknown_label``.
        unknown_label
            Label of the low-confidence cells. It must not be one of the model's classes when
            ``min_confidence > 0`` (CELLxGENE, for one, has a cell type called ``"unknown"``): pass another
            one, e.g. ``"low_confidence"``.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``None``; writes

        - ``adata.obs[key_added]``: categorical predicted label (``unknown_label`` below ``min_confidence``);
        - ``adata.obs[f"{key_added}_confidence"]``: highest class probability;
        - ``adata.obsm[f"{key_added}_proba"]``: ``(n_cells, n_classes)`` probabilities;
        - ``adata.uns[key_added]``: ``classes`` (column order of the probabilities), ``n_unknown`` (cells below
          ``min_confidence``), params, model, version, gene list.
        """
        if not 0.0 <= min_confidence <= 1.0:
            msg = f"min_confidence must be in [0, 1], got {min_confidence}."
            raise ValueError(msg)
        classes = self.classes_
        if min_confidence > 0 and unknown_label in classes:
            msg = (
                f"{unknown_label!r} is one of this model's classes, so low-confidence cells could not be told "
                f"apart from it; pass another unknown_label (e.g. unknown_label='low_confidence')."
            )
            raise ValueError(msg)
        adata = self.adata if adata is None else adata  # type: ignore[attr-defined]
        key_added = key_added or self._default_key
        proba = self.get_probabilities(
            adata, batch_size=batch_size
        )  # compute first: a failure writes nothing
        conf = proba.max(axis=1)
        labels = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
        low = conf < min_confidence
        labels[low] = unknown_label
        cats = classes + ([unknown_label] if unknown_label not in classes else [])
        adata.obs[key_added] = pd.Categorical(labels, categories=cats)
        adata.obs[confidence_key(key_added)] = conf.astype(np.float32)
        adata.obsm[proba_key(key_added)] = proba.astype(np.float32)
        self._record(  # type: ignore[attr-defined]
            adata,
            key_added,
            {"min_confidence": min_confidence, "unknown_label": unknown_label, "batch_size": batch_size},
            classes=np.asarray(classes, dtype=object),
            n_unknown=int(low.sum()),
        )
