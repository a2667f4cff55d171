"""Epoch-level macro F1 / balanced accuracy logged by the training plan (early-stopping monitors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

import scpredict as sp
from helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from scpredict.train._metrics import ConfusionScore, confusion_scores

FAST = {"logger": None, "enable_checkpointing": False, "progress_bar": "none"}


def _confusion(y, p, k):
    c = np.zeros((k, k), dtype=np.int64)
    np.add.at(c, (y, p), 1)
    return torch.as_tensor(c)


def test_confusion_scores_match_scikit_learn_over_the_true_classes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)  # class 4 never true, sometimes predicted
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, size=200))
    s = confusion_scores(_confusion(y, p, 5))
    present = np.unique(y)
    assert float(s["macro_f1"]) == pytest.approx(f1_score(y, p, labels=present, average="macro"), abs=1e-6)
    assert float(s["balanced_accuracy"]) == pytest.approx(balanced_accuracy_score(y, p), abs=1e-6)
    empty = confusion_scores(torch.zeros(3, 3, dtype=torch.long))
    assert np.isnan(float(empty["macro_f1"]))


def test_confusion_score_sums_batches_instead_of_averaging_them():
    # a rare class seen in one batch only: the mean of per-batch macro F1s differs from the epoch's
    y = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
    p = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    metric = ConfusionScore(2, "macro_f1")
    batches = [(0, 5), (5, 10)]
    per_batch = []
    for a, b in batches:
        metric.update(torch.as_tensor(y[a:b]), torch.as_tensor(p[a:b]))
        per_batch.append(f1_score(y[a:b], p[a:b], labels=np.unique(y[a:b]), average="macro", zero_division=0))
    epoch = float(metric.compute())
    assert epoch == pytest.approx(f1_score(y, p, average="macro"), abs=1e-6)
    assert abs(epoch - np.mean(per_batch)) > 0.05
    metric.reset()
    assert int(metric.confusion.sum()) == 0
    with pytest.raises(ValueError, match="macro_f1"):
        ConfusionScore(2, "f2")


@pytest.mark.parametrize("name", ["LinearClassifier", "TabNetClassifier"])
def test_validation_macro_f1_is_logged_and_restores_the_best_epoch(name):
    adata = sp.datasets.synthetic_celltypes(n_cells=320, n_genes=60, seed=3)
    cls = getattr(sp.models, name)
    cls.setup_anndata(adata, labels_key="cell_type")
    init = {"n_d": 8, "n_a": 8, "n_shared": 1, "n_independent": 1} if name == "TabNetClassifier" else {}
    model = cls(adata, **init)
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_obs)
    tr, va = np.sort(order[:240]), np.sort(order[240:])
    model.train(
        max_epochs=6,
        train_indices=tr,
        validation_indices=va,
        early_stopping_monitor="validation_macro_f1",
        batch_size=64,
        **FAST,
    )
    hist = model.history
    for key in ("validation_macro_f1", "validation_balanced_accuracy", "train_macro_f1"):
        assert key in hist, f"{key} not logged: {sorted(hist)}"
        assert hist[key].shape[0] == model.train_params_["epochs_run"]
    # the kept weights are those of the best validation macro F1, and that number is the macro F1 of the
    # restored model's predictions on the validation cells (the whole epoch, not a batch average)
    query = adata[va].copy()
    model.predict(query, key_added="pred")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = query.obs["pred"].astype(str).to_numpy()
    best = float(hist["validation_macro_f1"].to_numpy().max())
    # averaged over the classes of the truth, as sp.metrics.macro_f1 does
    assert f1_score(truth, pred, labels=np.unique(truth), average="macro") == pytest.approx(best, abs=1e-4)
    assert sp.metrics.macro_f1(truth, pred) == pytest.approx(best, abs=1e-4)
