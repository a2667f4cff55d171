"""Classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scpredict.metrics._classification import (
    accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    hierarchical_predictions,
    macro_f1,
    per_class_f1,
    weighted_f1,
)

# a: TP=1 FP=1 FN=1 -> F1 0.5 ; b: TP=2 FP=1 FN=0 -> F1 0.8 ; c: TP=0 FN=1 -> F1 0
Y_TRUE = ["a", "a", "b", "b", "c"]
Y_PRED = ["a", "b", "b", "b", "a"]


def test_accuracy_hand_computed():
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(3 / 5)


def test_per_class_f1_hand_computed():
    f1 = per_class_f1(Y_TRUE, Y_PRED)
    assert list(f1.index) == ["a", "b", "c"]
    np.testing.assert_allclose(f1.to_numpy(), [0.5, 0.8, 0.0])


def test_macro_and_weighted_f1_hand_computed():
    assert macro_f1(Y_TRUE, Y_PRED) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert weighted_f1(Y_TRUE, Y_PRED) == pytest.approx((2 * 0.5 + 2 * 0.8 + 1 * 0.0) / 5)


def test_f1_matches_sklearn_on_random_labels():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    t = rng.choice(list("abcde"), 200)
    p = np.where(rng.random(200) < 0.6, t, rng.choice(list("abcdef"), 200))
    labels = sorted(set(t))
    assert macro_f1(t, p) == pytest.approx(f1_score(t, p, labels=labels, average="macro"))
    assert weighted_f1(t, p) == pytest.approx(f1_score(t, p, labels=labels, average="weighted"))


def test_ece_hand_computed():
    # bin (0.8, 0.867]: conf 0.8 twice... use n_bins=2: bins (0,0.5], (0.5,1]
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    y = ["x", "y", "y", "x"]  # predictions x, x, y, y -> correct, wrong, correct, wrong
    # all confidences in (0.5, 1]: acc 0.5, mean conf (0.9+0.8+0.6+0.7)/4 = 0.75
    assert expected_calibration_error(y, proba, classes=["x", "y"], n_bins=2) == pytest.approx(0.25)
    # 10 bins: {0.9}: |1-0.9| ; {0.8}: |0-0.8| ; {0.6}: |1-0.6| ; {0.7}: |0-0.7|  each weight 1/4
    expected = (0.1 + 0.8 + 0.4 + 0.7) / 4
    assert expected_calibration_error(y, proba, classes=["x", "y"], n_bins=10) == pytest.approx(expected)


def test_ece_perfectly_calibrated_is_zero_and_unseen_label_counts_wrong():
    proba = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(["x", "y"], proba, classes=["x", "y"]) == pytest.approx(0.0)
    assert expected_calibration_error(["x", "z"], proba, classes=["x", "y"]) == pytest.approx(0.5)


def test_ece_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(["x"], np.ones((1, 3)) / 3, classes=["x", "y"])


def test_confusion_matrix_counts_and_extra_prediction_column():
    cm = confusion_matrix(["a", "a", "b"], ["a", "unknown", "a"])
    assert list(cm.index) == ["a", "b"]
    assert list(cm.columns) == ["a", "b", "unknown"]
    assert cm.loc["a", "a"] == 1 and cm.loc["a", "unknown"] == 1 and cm.loc["b", "a"] == 1
    norm = confusion_matrix(["a", "a", "b"], ["a", "unknown", "a"], normalize=True)
    np.testing.assert_allclose(norm.sum(axis=1), 1.0)


def test_hierarchical_predictions_subtype_counts_as_correct():
    hierarchy = {"T cell": ["CD4 T", "CD8 T"], "CD4 T": ["Treg"]}
    t = ["T cell", "T cell", "CD4 T", "CD4 T", "B cell"]
    p = ["CD4 T", "Treg", "T cell", "CD8 T", "B cell"]
    out = hierarchical_predictions(t, p, hierarchy=hierarchy)
    # subtypes (incl. grandchild) of the truth become correct; a parent or a sibling does not
    assert list(out) == ["T cell", "T cell", "T cell", "CD8 T", "B cell"]


def test_hierarchy_cycle_is_rejected():
    with pytest.raises(ValueError, match="cycle"):
        hierarchical_predictions(["a"], ["b"], hierarchy={"a": ["b"], "b": ["a"]})


def test_report_lists_unseen_labels_and_unknown_fraction():
    rep = classification_report(
        ["a", "b", "new", "new"],
        ["a", "unknown", "a", "b"],
        proba=np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.3, 0.7]]),
        classes=["a", "b"],
    )
    assert rep["unseen_labels"] == ["new"]
    assert rep["n_unseen"] == 2
    assert rep["frac_unknown"] == pytest.approx(0.25)
    assert rep["accuracy"] == pytest.approx(0.25)
    assert isinstance(rep["per_class_f1"], pd.Series)
    assert rep["per_class_f1"]["new"] == 0.0


def test_missing_labels_error():
    with pytest.raises(ValueError, match="missing"):
        accuracy(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="length"):
        accuracy(["a"], ["a", "b"])
