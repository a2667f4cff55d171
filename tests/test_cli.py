"""The job commands: ``scpredict train`` → ``predict`` → ``evaluate``, configs, ``--resume``."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp_sparse

import scpredict as sp
from scpredict import _cli_jobs
from scpredict._cli import main


@pytest.fixture
def files(tmp_path):
    """Train / test h5ad (counts, sparse) and a config for LinearClassifier."""
    adata = sp.datasets.synthetic_celltypes(n_cells=500, n_genes=40)
    adata.X = sp_sparse.csr_matrix(adata.X, dtype=np.float32)
    adata.layers.clear()
    train, test = adata[:400].copy(), adata[400:].copy()
    test = test[:, test.var_names[::-1]].copy()  # genes in another order: aligned by name
    train.write_h5ad(tmp_path / "train.h5ad")
    test.write_h5ad(tmp_path / "test.h5ad")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "setup: {labels_key: cell_type}\n"
        "model: {dropout_rate: 0.0}\n"
        "train: {max_epochs: 3, batch_size: 32, lr: 0.01, accelerator: cpu, devices: 1}\n"
        "data: {backed: true, block_size: 64}\n"
    )
    return tmp_path, test


def _train(d, out, *extra: str) -> int:
    """``scpredict train LinearClassifier`` on the fixture's training file and config."""
    args = ["train", "LinearClassifier", "--data", str(d / "train.h5ad"), "--config", str(d / "cfg.yaml")]
    return main([*args, "--out", str(out), *extra])


def test_round_trip_train_predict_evaluate(files):
    d, test = files
    out = d / "run"
    assert _train(d, out) == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["model"] == "LinearClassifier" and summary["train_params"]["epochs_run"] == 3
    assert (out / "model" / "weights.safetensors").exists() and (out / "config.yaml").exists()

    assert (
        main(
            [
                "predict",
                "--model",
                str(out / "model"),
                "--data",
                str(d / "test.h5ad"),
                "--out",
                str(d / "pred.csv"),
                "--key-added",
                "lin",
            ]
        )
        == 0
    )
    table = pd.read_csv(d / "pred.csv", index_col=0)
    assert list(table.index) == list(test.obs_names)
    assert {"lin", "lin_confidence"} <= set(table.columns)
    assert np.allclose(table.filter(like="lin_proba_").sum(1), 1.0, atol=1e-4)
    model = sp.models.LinearClassifier.load(out / "model")
    expected = model.get_probabilities(test).argmax(1)
    assert (table["lin"].to_numpy() == np.asarray(model.classes_)[expected]).all()

    assert (
        main(
            [
                "evaluate",
                "--predictions",
                str(d / "pred.csv"),
                "--data",
                str(d / "test.h5ad"),
                "--key",
                "lin",
                "--truth",
                "cell_type",
                "--out",
                str(d / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((d / "m.json").read_text())
    y = test.obs["cell_type"].astype(str).to_numpy()
    assert metrics["accuracy"] == pytest.approx(float((table["lin"].to_numpy() == y).mean()))
    assert metrics["accuracy"] > 1.5 / test.obs["cell_type"].nunique()  # learned something
    assert set(metrics["per_class_f1"]) == set(y)

    # --model mode predicts, then scores against the model's own label column
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(out / "model"),
                "--data",
                str(d / "test.h5ad"),
                "--out",
                str(d / "m2.json"),
            ]
        )
        == 0
    )
    assert json.loads((d / "m2.json").read_text())["accuracy"] == pytest.approx(metrics["accuracy"])


def test_predict_h5ad_writes_only_the_outputs(files):
    d, test = files
    out = d / "run"
    _train(d, out, "--max-epochs", "1")
    main(
        ["predict", "--model", str(out / "model"), "--data", str(d / "test.h5ad"), "--out", str(d / "p.h5ad")]
    )
    pred = ad.read_h5ad(d / "p.h5ad")
    assert list(pred.obs.columns) == ["linear", "linear_confidence"]
    assert list(pred.obsm.keys()) == ["linear_proba"] and "linear" in pred.uns
    assert pred.n_obs == test.n_obs and pred.X is None


def test_interrupted_cli_run_resumes(files, monkeypatch):
    import lightning.pytorch as pl

    d, _ = files
    out = d / "run"

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                raise RuntimeError("killed mid-epoch")

    monkeypatch.setattr(_cli_jobs, "_extra_callbacks", lambda: [Crash()])
    with pytest.raises(RuntimeError, match="killed"):
        _train(d, out)
    assert not (out / "model").exists()
    monkeypatch.setattr(_cli_jobs, "_extra_callbacks", lambda: [])
    assert _train(d, out, "--resume") == 0
    summary = json.loads((out / "train.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt")
    assert summary["train_params"]["epochs_run"] == 2  # epochs 1 and 2 were left after the crash
    assert sp.models.LinearClassifier.load(out / "model").is_trained_


def test_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("setup: {labels_key: x}\ntrainer: {max_epochs: 1}\n")
    with pytest.raises(ValueError, match="trainer"):
        _cli_jobs.load_config(bad)
    bad.write_text("data: {blocksize: 10}\n")
    with pytest.raises(ValueError, match="blocksize"):
        _cli_jobs.load_config(bad)
    with pytest.raises(SystemExit, match="NoSuchModel"):
        main(["train", "NoSuchModel", "--data", str(bad), "--out", str(tmp_path / "o")])


def test_predict_from_chunk_directory(files):
    d, test = files
    out = d / "run"
    _train(d, out, "--max-epochs", "1")
    sp.data.write_chunks(test, d / "chunks", chunk_size=30)
    main(
        ["predict", "--model", str(out / "model"), "--data", str(d / "chunks"), "--out", str(d / "p.parquet")]
    )
    got = pd.read_parquet(d / "p.parquet")
    model = sp.models.LinearClassifier.load(out / "model")
    want = model.get_probabilities(test)
    np.testing.assert_allclose(got.filter(like="linear_proba_").to_numpy(), want, atol=1e-5)
