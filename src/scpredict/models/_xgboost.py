"""Gradient-boosted trees (xgboost), scTab's XGBoost baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp_sparse
from anndata import AnnData

from .._settings import settings
from ._base import DEFAULT_TRAIN_SIZE, BaseModel
from ._classifier import ClassifierMixin, InputScale, log_normalize, setup_classifier

__all__ = ["XGBoostClassifier"]

_MODEL_FILE = "xgboost.json"


def _xgboost():
    try:
        import xgboost
    except ImportError as e:  # pragma: no cover - xgboost is a dependency
        msg = "XGBoostClassifier needs xgboost: `pip install xgboost`."
        raise ImportError(msg) from e
    return xgboost


class XGBoostClassifier(ClassifierMixin, BaseModel):
    """Multi-class gradient-boosted trees (``multi:softprob``) on log-normalised expression.

    The booster is saved in xgboost's own JSON model format (``xgboost.json``), never pickled.
    ``train`` uses a held-out validation split for early stopping on the multi-class log loss.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_estimators
        Maximum number of boosting rounds.
    max_depth
        Depth of each tree.
    learning_rate
        Shrinkage.
    subsample, colsample_bytree
        Row and column subsampling per tree.
    n_jobs
        Threads (``None``: xgboost's default).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=50)
    >>> sp.models.XGBoostClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = sp.models.XGBoostClassifier(adata, n_estimators=20)
    >>> model.train()
    >>> model.predict(adata, key_added="xgb")
    >>> sorted(adata.uns["xgb"]["classes"])
    ['type0', 'type1', 'type2', 'type3']
    """

    _default_key = "xgboost"

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
            ``"log1p"`` or ``"any"``. Checked now and on every new AnnData.
        """
        setup_classifier(
            cls, adata, labels_key=labels_key, layer=layer, embedding_key=embedding_key, scale=scale
        )

    def __init__(
        self,
        adata: AnnData,
        *,
        n_estimators: int = 300,
        max_depth: int = 6,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        colsample_bytree: float = 0.5,
        n_jobs: int | None = None,
    ) -> None:
        super().__init__(
            adata,
            n_estimators=n_estimators,
            max_depth=max_depth,
            learning_rate=learning_rate,
            subsample=subsample,
            colsample_bytree=colsample_bytree,
            n_jobs=n_jobs,
        )
        self.booster_ = None

    def _features(self, prepared: Any):
        """Log-normalised expression as CSR with no stored zeros, in training and prediction alike.

        xgboost reads the entries a sparse matrix leaves out as *missing* but a dense zero as the value 0, and
        the two take different branches of a split, so the same cells stored densely and sparsely would get
        different predictions. One representation (zeros always missing; the usual one for scRNA-seq) avoids
        that.
        """
        x = sp_sparse.csr_matrix(log_normalize(prepared.adata.X, scale=self.setup_.scale), dtype=np.float32)
        x.eliminate_zeros()
        return x

    def train(
        self,
        *,
        train_indices: np.ndarray | None = None,
        validation_indices: np.ndarray | None = None,
        train_size: float = DEFAULT_TRAIN_SIZE,
        early_stopping_rounds: int = 20,
    ) -> None:
        """Fit the booster.

        Parameters
        ----------
        train_indices, validation_indices
            Integer positions of training / validation cells. By default a random ``train_size`` split
            (seeded by ``sp.settings.seed``); ``train_indices`` alone train on those cells with no validation
            cells (no early stopping), as in the torch models — the other cells may be test cells. Validation
            cells are used only for early stopping.
        train_size
            Fraction of cells used for fitting when no indices are given (1.0: no early stopping).
        early_stopping_rounds
            Stop when the validation log loss has not improved for this many rounds.
        """
        xgb = _xgboost()
        prepared = self._prepare(self.adata)
        tr, va = self._train_split(
            prepared.n_obs,
            {
                "train_indices": train_indices,
                "validation_indices": validation_indices,
                "train_size": train_size,
            },
        )
        x = self._features(prepared)
        y = prepared.adata.obs["labels"].to_numpy()
        p = self.init_params_
        params = {
            "objective": "multi:softprob",
            "num_class": len(self.classes_),
            "max_depth": p["max_depth"],
            "eta": p["learning_rate"],
            "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"],
            "tree_method": "hist",
            "eval_metric": "mlogloss",
            "seed": settings.seed,
        }
        if p["n_jobs"] is not None:
            params["nthread"] = p["n_jobs"]
        dtrain = xgb.DMatrix(x[tr], label=y[tr])
        evals = [(xgb.DMatrix(x[va], label=y[va]), "validation")] if len(va) else []
        history: dict = {}
        self.booster_ = xgb.train(
            params,
            dtrain,
            num_boost_round=p["n_estimators"],
            evals=evals,
            evals_result=history,
            early_stopping_rounds=early_stopping_rounds if evals else None,
            verbose_eval=False,
        )
        if evals:
            import pandas as pd

            loss = history["validation"]["mlogloss"]
            self.history_ = {"validation_loss": pd.DataFrame({"validation_loss": loss}).rename_axis("epoch")}
        self.is_trained_ = True
        self.train_params_ = {
            "n_train": int(len(tr)),
            "n_validation": int(len(va)),
            "best_iteration": int(getattr(self.booster_, "best_iteration", p["n_estimators"] - 1)),
        }

    def _probabilities(self, prepared: Any, *, batch_size: int) -> np.ndarray:
        xgb = _xgboost()
        x = self._features(prepared)
        best = self.train_params_.get("best_iteration")
        rng = (0, int(best) + 1) if best is not None else (0, 0)
        return np.asarray(self.booster_.predict(xgb.DMatrix(x), iteration_range=rng), dtype=np.float64)

    # ---- persistence: xgboost's own JSON format, no pickle
    def _get_state_arrays(self) -> dict[str, Any]:
        return {}

    def _set_state_arrays(self, state: Any) -> None:
        pass

    def _save_extra_files(self, directory: Path) -> None:
        if self.booster_ is not None:
            self.booster_.save_model(str(Path(directory) / _MODEL_FILE))

    def _load_extra_files(self, directory: Path) -> None:
        path = Path(directory) / _MODEL_FILE
        self.booster_ = None
        if path.exists():
            self.booster_ = _xgboost().Booster()
            self.booster_.load_model(str(path))
