"""SCORE ("Keeping SCORE", seed 000): cell types from class-conditional denoising scores over embeddings."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..module._score import EmbeddingScoreModule
from ._base import DEFAULT_TRAIN_SIZE, BaseModel, obsm_array
from ._classifier import ClassifierMixin, InputScale, add_loss_kwargs, log_normalize, setup_classifier

__all__ = ["ScoreClassifier"]


def fit_temperature(scores: np.ndarray, y: np.ndarray, *, log_prior: np.ndarray | None = None) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(scores / T + log π)`` (Guo et al.
    2017; with a class prior ``π`` the scores are treated as class-conditional log-likelihoods, Bayes' rule).

    Parameters
    ----------
    scores
        ``(n, n_classes)`` class scores.
    y
        ``(n,)`` integer true classes.
    log_prior
        ``(n_classes,)`` log prior probabilities added after scaling (``None``: uniform).

    Returns
    -------
    The fitted temperature (searched on a log scale, bounded to ``[1e-6, 1e3]`` × the score spread).
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    s = np.asarray(scores, dtype=np.float64)
    spread = float(np.std(s - s.mean(axis=1, keepdims=True))) or 1.0
    offset = 0.0 if log_prior is None else np.asarray(log_prior, dtype=np.float64)[None, :]

    def nll(log_t: float) -> float:
        z = s / (np.exp(log_t) * spread) + offset
        return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(np.log(1e-6), np.log(1e3)), method="bounded")
    return float(np.exp(res.x) * spread)


def _balanced_nll(scores: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Negative log-likelihood of ``softmax(scores / T)`` averaged within each class, then over classes."""
    from scipy.special import logsumexp

    z = np.asarray(scores, dtype=np.float64) / temperature
    nll = logsumexp(z, axis=1) - z[np.arange(len(y)), y]
    return float(np.mean([nll[y == c].mean() for c in np.unique(y)]))


#: internal encoders of the expression (used without an ``embedding_key``)
_ENCODERS = ("logreg", "tabnet")
#: options of the "logreg" encoder (scikit-learn ``LogisticRegression``) and their defaults
_LOGREG_DEFAULTS = {"C": 1.0, "max_iter": 500}

#: candidate timestep windows ``(lo, hi)`` (fractions of ``T``) for ``timestep_range="auto"``
_WINDOWS = tuple((lo, hi) for lo in (0.0, 0.05, 0.1, 0.2, 0.3) for hi in (0.6, 0.8, 1.0))


class _BatchDict(torch.utils.data.Dataset):
    """Rows of a dict of tensors; indexed by a list of rows (a whole batch at once)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


class ScoreClassifier(ClassifierMixin, BaseModel):
    """The SCORE classifier: a class-conditional diffusion model over cell embeddings used as a classifier.

    A denoiser ``ε_θ(x_t, t, y)`` is trained on embeddings of the training cells with their cell types
    (DDPM, Ho et al. 2020; label dropout gives the unconditional model too). A cell's score for class ``y``
    is the negative expected denoising error ``−E_{t,ε} ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t, y)‖²`` over evenly
    spaced timesteps and noise draws shared by all classes (the diffusion-classifier estimate of the
    class-conditional likelihood; Li et al. 2023, Clark & Jaini 2023, who also weight timesteps), with the
    timestep window and weighting chosen on validation cells, and the probabilities are
    ``softmax(score / T + log π)`` with the temperature ``T`` fitted on validation cells, where ``log π`` is
    either zero or the log class frequencies of the training cells (Bayes' rule: the score approximates
    ``log p(x | c)``), whichever classifies the validation cells better (``class_prior``).

    Embeddings come from an ``obsm`` key (``setup_anndata(..., embedding_key=...)``, e.g. the output of
    :meth:`TabNetClassifier.get_embedding`), or, without one, from the model's own encoder of the expression
    (``encoder``):

    - ``"logreg"`` (default): cross-fitted logistic-regression logits. ``n_folds`` L2 logistic regressions
      (scikit-learn, lbfgs) are fitted on the training cells, each leaving one stratified fold out; a training
      cell's embedding — what the denoiser is trained on — is the decision function (class logits) of the fold
      model that did not see it, and every other cell (validation cells, any new AnnData) is embedded by the
      mean of the ``n_folds`` decision functions. That mean is one affine map ``W̄ x + b̄`` of the
      log-normalised expression, stored in the module (safetensors; prediction needs no scikit-learn).
    - ``"tabnet"``: the model's own TabNet encoder trained first as a classifier on the expression and then
      frozen (scTab embeddings, as in the seed).

    Why cross-fitting: a *supervised* embedding learned on the same training cells (TabNet's, a plain fit of
    a classifier's logits) separates those cells better than it separates new ones, so the denoiser learns
    classes tighter than they are on new data. Out-of-fold embeddings of the training cells come from the
    same distribution as the embeddings of new cells. In the cell-type benchmark (``docs/benchmarks.md``,
    "Cell-type classification": 70/15/15 split, 2,000 genes) SCORE on the cross-fitted logistic-regression
    logits had the highest validation macro F1 of the three embeddings tried (mouse bladder / Kang PBMC:
    0.919 / 0.870, against 0.846 / 0.806 with TabNet embeddings and 0.910 / 0.754 with 50 training-set
    principal components) — the reason it is the default; test macro F1 0.881 / 0.822, against 0.774 / 0.818
    and 0.837 / 0.824.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Width of the denoiser.
    n_layers
        Residual blocks of the denoiser.
    n_timesteps
        Diffusion steps ``T``.
    noise_schedule
        ``"cosine"`` or ``"linear"``.
    p_uncond
        Label-dropout probability during training.
    dropout_rate
        Dropout inside the denoiser.
    n_eval_timesteps
        Timesteps averaged over when scoring.
    n_noise
        Noise draws per timestep when scoring (pairs of antithetic draws ``ε, −ε``).
    timestep_range
        ``(lo, hi)``: the score averages the denoising error over ``n_eval_timesteps`` evenly spaced timesteps
        in ``[lo·T, hi·T)``; ``"auto"`` picks the window among a few candidates by the class-balanced
        log-likelihood of the validation cells (stored as ``timestep_range_``). Small timesteps, where the
        denoiser must recover the exact embedding, are the noisiest part of the estimate on small training
        sets; very large ones carry almost no class information.
    timestep_weighting
        ``"balanced"``: the expected error is a weighted mean over the scoring timesteps with weights
        ``1 / spread_t``, where ``spread_t`` is the standard deviation of the class-centred errors of the
        validation cells at timestep ``t`` (each timestep then contributes comparably, instead of the few
        timesteps with the largest, noisiest error differences dominating); ``"uniform"``: plain mean;
        ``"auto"``: whichever of the two gives the lower class-balanced NLL on the validation cells. The
        weights are stored as ``timestep_weights_``.
    class_prior
        ``"empirical"``: Bayes' rule, ``p(c | x) ∝ p(x | c) π_c`` — the probabilities are
        ``softmax(score / T + log π)`` with ``π`` the class frequencies of the training cells (add-one
        smoothed) and ``T`` fitted jointly with the prior; the denoising score approximates
        ``log p(x | c)`` only, so without a prior every class is treated as equally frequent.
        ``"uniform"``: ``softmax(score / T)``. ``"auto"``: whichever of the two gives the higher macro F1 on
        the validation cells (ties: ``"uniform"``); the choice is stored as ``class_prior_`` and the log prior
        used as ``log_prior_`` (zeros when uniform). On the benchmark sets the prior raised mouse bladder's
        validation macro F1 (3/3 denoiser seeds) and lowered Kang's slightly (6/6), so neither fixed choice
        is supported by the validation cells of both; see ``docs/benchmarks.md``.
    standardize
        How embeddings are scaled before diffusion: ``"dim"`` (each dimension to unit variance) or
        ``"global"`` (centred, one common scale: keeps the relative variance of the dimensions, so e.g.
        low-variance principal components do not weigh as much as the leading ones in the denoising error).
    encoder
        Internal encoder of the expression, used only without ``embedding_key``: ``"logreg"`` (cross-fitted
        logistic-regression logits, see above; ``n_classes`` dimensions, 1 for two classes) or ``"tabnet"``.
        The input is what every classifier here sees: genes aligned by name, normalised to 10⁴ counts per
        cell + log1p when the declared scale is ``"counts"``, used as is for ``"log1p"`` / ``"any"``.
    n_folds
        Folds of the ``"logreg"`` encoder. The stratified split is shuffled with ``sp.settings.seed`` (stored
        per training cell as ``encoder_folds_`` after training). Every class needs at least 2 training cells
        (each fold model must see every class); a class with fewer training cells than ``n_folds`` has one
        of its cells held out in as many folds as it has cells.
    encoder_kwargs
        Keyword arguments of the internal encoder (used only without ``embedding_key``): for ``"logreg"``
        ``C`` (inverse L2 strength, default 1.0) and ``max_iter`` (lbfgs iterations, default 500) of
        scikit-learn's ``LogisticRegression``; for ``"tabnet"`` those of the TabNet module, e.g.
        ``{"n_d": 64, "n_a": 32}``.
    gaussian_base
        Build the denoiser as the exact denoiser of one Gaussian per class plus a learned residual that starts
        at zero (:class:`~scpredict.module._score.ScoreModule`, ``gaussian_base``): the class means and
        covariances (each shrunk towards the pooled within-class covariance) are fitted to the standardised
        training embeddings, so the untrained model already scores like a quadratic discriminant and training
        learns only the departures from it. On the benchmark sets (10 validation sets, ``docs/benchmarks.md``)
        it changed the validation macro F1 by −0.007 ± 0.013 (split noise) and stopped after fewer epochs
        (about 190 instead of 240), so it is off by default.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=50)
    >>> sp.models.ScoreClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = sp.models.ScoreClassifier(adata, n_hidden=32)  # cross-fitted logistic-regression logits
    >>> model.train(max_epochs=2)
    >>> model.predict(adata, key_added="score")
    >>> adata.obsm["score_proba"].shape
    (200, 4)
    """

    _default_key = "score"
    _uses_embedding = True

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
        """Register the labels and the embedding (an ``obsm`` key) or the expression to embed.

        Parameters
        ----------
        adata
            Training data.
        labels_key
            ``obs`` column with the cell types.
        layer
            Expression layer (``None`` = ``X``); embedded by the internal encoder when ``embedding_key`` is
            ``None``, otherwise only checked and gene-aligned.
        embedding_key
            ``obsm`` key of precomputed embeddings (e.g. from ``TabNetClassifier.get_embedding``); new data
            must carry the same key.
        scale
            Declared scale of ``layer``: ``"counts"`` (normalised to 10⁴ per cell + log1p by the encoder),
            ``"log1p"`` or ``"any"``.
        """
        setup_classifier(
            cls, adata, labels_key=labels_key, layer=layer, embedding_key=embedding_key, scale=scale
        )

    def __init__(
        self,
        adata: AnnData,
        *,
        n_hidden: int = 128,
        n_layers: int = 3,
        n_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        p_uncond: float = 0.1,
        dropout_rate: float = 0.0,
        n_eval_timesteps: int = 20,
        n_noise: int = 2,
        timestep_range: tuple[float, float] | str = "auto",
        timestep_weighting: str = "auto",
        class_prior: str = "auto",
        standardize: str = "dim",
        encoder: str = "logreg",
        n_folds: int = 5,
        encoder_kwargs: Mapping[str, Any] | None = None,
        gaussian_base: bool = False,
    ) -> None:
        enc = None if encoder_kwargs is None else dict(encoder_kwargs)
        if encoder not in _ENCODERS:
            msg = f"encoder must be one of {_ENCODERS}, got {encoder!r}."
            raise ValueError(msg)
        if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
            msg = f"n_folds must be an integer >= 2, got {n_folds!r}."
            raise ValueError(msg)
        n_folds = int(n_folds)
        if timestep_range != "auto":
            lo, hi = (float(v) for v in timestep_range)
            if not 0.0 <= lo < hi <= 1.0:
                msg = f"timestep_range must be 'auto' or (lo, hi) with 0 <= lo < hi <= 1, got {timestep_range!r}."
                raise ValueError(msg)
            timestep_range = [lo, hi]
        if timestep_weighting not in ("auto", "balanced", "uniform"):
            msg = f"timestep_weighting must be 'auto', 'balanced' or 'uniform', got {timestep_weighting!r}."
            raise ValueError(msg)
        if class_prior not in ("auto", "empirical", "uniform"):
            msg = f"class_prior must be 'auto', 'empirical' or 'uniform', got {class_prior!r}."
            raise ValueError(msg)
        if standardize not in ("dim", "global"):
            msg = f"standardize must be 'dim' or 'global', got {standardize!r}."
            raise ValueError(msg)
        super().__init__(
            adata,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_timesteps=n_timesteps,
            noise_schedule=noise_schedule,
            p_uncond=p_uncond,
            dropout_rate=dropout_rate,
            n_eval_timesteps=n_eval_timesteps,
            n_noise=n_noise,
            timestep_range=timestep_range,
            timestep_weighting=timestep_weighting,
            class_prior=class_prior,
            standardize=standardize,
            encoder=encoder,
            n_folds=n_folds,
            encoder_kwargs=enc,
            gaussian_base=bool(gaussian_base),
        )
        if encoder == "logreg" and self._has_encoder and enc:
            unknown = sorted(set(enc) - set(_LOGREG_DEFAULTS))
            if unknown:
                msg = (
                    f"encoder_kwargs {unknown} are not options of the 'logreg' encoder (it takes "
                    f"{sorted(_LOGREG_DEFAULTS)}); for TabNet options pass encoder='tabnet'."
                )
                raise ValueError(msg)
            if "C" in enc and not float(enc["C"]) > 0:
                msg = f"encoder_kwargs['C'] must be > 0, got {enc['C']!r}."
                raise ValueError(msg)
            if "max_iter" in enc and int(enc["max_iter"]) < 1:
                msg = f"encoder_kwargs['max_iter'] must be >= 1, got {enc['max_iter']!r}."
                raise ValueError(msg)
        if "embedding" in self.setup_.obsm:
            self.extra_arrays_["n_embedding"] = np.array(
                [obsm_array(adata, self.setup_.obsm["embedding"]).shape[1]], dtype=np.int64
            )
        self.temperature_ = 1.0
        self.timestep_range_: tuple[float, float] = (
            (0.0, 1.0) if timestep_range == "auto" else (float(timestep_range[0]), float(timestep_range[1]))
        )
        self.timestep_weights_ = np.ones(int(n_eval_timesteps))
        self.class_prior_ = "uniform" if class_prior == "auto" else class_prior
        self.log_prior_ = np.zeros(len(self.vocab_["labels"]))
        #: fold of each cell in the cross-fitting of the "logreg" encoder (-1: not a training cell)
        self.encoder_folds_: np.ndarray | None = None
        self._fixed_embedding: np.ndarray | None = None
        self.module = self._build_module()

    @property
    def _has_encoder(self) -> bool:
        return "embedding" not in self.setup_.obsm

    @property
    def _encoder_kind(self) -> str | None:
        """``"logreg"``, ``"tabnet"`` or ``None`` (embedding read from ``obsm``). Models saved before the
        ``encoder`` option existed used TabNet."""
        return self.init_params_.get("encoder", "tabnet") if self._has_encoder else None

    def _build_module(self) -> EmbeddingScoreModule:
        scoring = (
            "n_eval_timesteps",
            "n_noise",
            "timestep_range",
            "timestep_weighting",
            "class_prior",
            "standardize",
            "encoder",
            "n_folds",
            "encoder_kwargs",
        )
        p = {k: v for k, v in self.init_params_.items() if k not in scoring}
        enc = self.init_params_["encoder_kwargs"]
        kind = self._encoder_kind
        n_classes = len(self.vocab_["labels"])
        n_emb = None
        if kind == "tabnet":
            enc = {"n_d": 64, "n_a": 32, "dropout_rate": 0.3, "mask_type": "entmax", **(enc or {})}
            enc["log_normalize_input"] = self.setup_.scale == "counts"
        elif kind == "logreg":  # class logits (one for two classes, as scikit-learn's decision function)
            enc = {"n_output": 1 if n_classes == 2 else n_classes}
            enc["log_normalize_input"] = self.setup_.scale == "counts"
        else:
            enc = None
            n_emb = int(self.extra_arrays_["n_embedding"][0])
        return EmbeddingScoreModule(
            self.n_vars,
            n_classes,
            n_embedding=n_emb,
            encoder_kwargs=enc,
            encoder="linear" if kind == "logreg" else "tabnet",
            **p,
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        *,
        max_epochs: int = 500,
        encoder_max_epochs: int = 50,
        batch_size: int = 128,
        lr: float = 2e-3,
        encoder_lr: float = 1e-2,
        train_size: float = DEFAULT_TRAIN_SIZE,
        train_indices: np.ndarray | None = None,
        validation_indices: np.ndarray | None = None,
        early_stopping_patience: int = 60,
        **kwargs: Any,
    ) -> None:
        """Fit the encoder (if any), then train the denoiser, then calibrate on validation cells: timestep window
        and weighting, class prior (``class_prior="auto"``) and the temperature (fitted together with the prior).

        Encoder ``"logreg"``: ``n_folds`` logistic regressions are fitted on the training cells only (stratified
        folds shuffled with ``sp.settings.seed``; the fold of each cell is kept as ``encoder_folds_``); the
        denoiser is trained on the out-of-fold logits of the training cells, and the validation cells are
        embedded by the mean map, like new data. Encoder ``"tabnet"``: TabNet is trained as a classifier
        (``encoder_max_epochs``, ``encoder_lr``) and frozen.

        The denoiser needs many more updates than a classifier: its validation loss improves slowly and
        unevenly, and the class differences of the denoising error — what SCORE classifies with — keep
        growing after the loss has nearly flattened. With a patience of 15 epochs the Kang PBMC benchmark
        stopped early (validation macro F1 0.833, fitted temperature 0.007: the classes were barely told
        apart); with the default patience of 60 it reached 0.857 (temperature 0.054), and allowing 1,000
        epochs stopped at the same best epoch.

        Parameters
        ----------
        max_epochs
            Maximum epochs of the denoiser.
        encoder_max_epochs
            Maximum epochs of the internal TabNet encoder (classification loss; ``encoder="tabnet"`` only).
        batch_size
            Cells per batch.
        lr
            Learning rate of the denoiser.
        encoder_lr
            Learning rate of the TabNet encoder (weight decay 0.05 and early stopping on validation accuracy,
            as :meth:`TabNetClassifier.train`).
        train_size
            Fraction of cells for training when no indices are given; the rest is the validation set used for
            early stopping and the temperature.
        train_indices, validation_indices
            Explicit integer positions. ``train_indices`` alone means no validation cells: the denoiser then
            trains without early stopping on held-out cells and the calibration (timestep window, class
            prior, temperature) is fitted on the training cells, which the denoiser has seen — over-confident
            probabilities (a warning says so). Pass ``validation_indices`` too.
        early_stopping_patience
            Epochs without validation improvement before stopping (each stage; the encoder stage uses
            ``min(early_stopping_patience, 20)``).
        **kwargs
            Passed to :meth:`BaseModel.train` (``accelerator``, ``logger``, ...).
        """
        tr, va = self._train_split(
            self.adata.n_obs,
            {
                "train_indices": train_indices,
                "validation_indices": validation_indices,
                "train_size": train_size,
                "validation_size": kwargs.pop("validation_size", None),
            },
        )
        user_plan = kwargs.pop("plan_kwargs", None)
        common = {"batch_size": batch_size, "train_indices": tr, "validation_indices": va, **kwargs}

        def stage_kwargs(stage: str) -> dict[str, Any]:
            kw = {"plan_kwargs": user_plan}
            add_loss_kwargs(kw, stage=stage)
            return kw

        history: dict = {}
        kind = self._encoder_kind
        encoder = self.module.encoder
        if kind == "tabnet":
            for p in encoder.parameters():
                p.requires_grad_(True)
            super().train(
                max_epochs=encoder_max_epochs,
                lr=encoder_lr,
                weight_decay=0.05,
                early_stopping_patience=min(early_stopping_patience, 20),
                early_stopping_monitor="validation_accuracy",
                **stage_kwargs("encoder"),
                **common,
            )
            history.update({f"encoder_{k}": v for k, v in self.history_.items()})
            for p in encoder.parameters():
                p.requires_grad_(False)
        prepared = self._prepare(self.adata, keys=self._input_keys())
        oof = self._fit_logreg_encoder(prepared, tr) if kind == "logreg" else None
        emb = self._embeddings(prepared, batch_size=1024)
        if oof is not None:  # the denoiser learns from out-of-fold embeddings of the training cells
            emb[tr] = oof
        std = emb[tr].std(axis=0)
        if self.init_params_["standardize"] == "global":
            std = np.full_like(std, np.sqrt(np.mean(std**2)))
        self.module.score.set_standardization(
            torch.from_numpy(emb[tr].mean(axis=0)), torch.from_numpy(np.where(std > 0, std, 1.0))
        )
        if self.module.score.gaussian_base:
            labels = self._encode_categories(self.adata, ["labels"])["labels"]
            self.module.score.set_class_gaussians(
                self.module.score.standardize(torch.from_numpy(np.ascontiguousarray(emb[tr]))),
                torch.from_numpy(labels[tr].astype(np.int64)),
            )
        self._fixed_embedding = emb if oof is not None else None
        try:
            super().train(
                max_epochs=max_epochs,
                lr=lr,
                early_stopping_patience=early_stopping_patience,
                **stage_kwargs("diffusion"),
                **common,
            )
        finally:
            self._fixed_embedding = None
        history.update(self.history_)
        self.history_ = history
        if len(va) == 0:
            warnings.warn(
                "ScoreClassifier.train has no validation cells (train_indices without validation_indices, or "
                "train_size=1): the timestep window, class prior and temperature are calibrated on the training "
                "cells, so probabilities are over-confident. Pass validation_indices= (or train_size < 1).",
                UserWarning,
                stacklevel=2,
            )
        calib = va if len(va) else tr
        y = self._encode_categories(self.adata, ["labels"])["labels"][calib]
        if self.init_params_["timestep_range"] == "auto":
            self.timestep_range_ = self._select_timestep_range(emb[calib], y)
        uniform = np.ones(int(self.init_params_["n_eval_timesteps"]))
        self.timestep_weights_ = uniform
        weighting = self.init_params_["timestep_weighting"]
        if weighting in ("balanced", "auto"):
            per_t = self._class_errors(emb[calib], per_timestep=True)  # (n, n_t, c)
            spread = (per_t - per_t.mean(axis=2, keepdims=True)).std(axis=(0, 2))
            if spread.max() > 0:
                w = 1.0 / np.maximum(spread, 1e-12 * float(spread.max()))
                balanced = w / w.mean()
            else:  # no class differences at any timestep (e.g. a barely trained denoiser)
                balanced = uniform
            self.timestep_weights_ = balanced
            if weighting == "auto":  # keep the weighting with the lower class-balanced validation NLL
                nll = {}
                for name, wt in (("uniform", uniform), ("balanced", balanced)):
                    sc = -(per_t * wt[None, :, None]).sum(axis=1) / wt.sum()
                    nll[name] = _balanced_nll(sc, y, fit_temperature(sc, y))
                self.timestep_weights_ = balanced if nll["balanced"] < nll["uniform"] else uniform
        errors = self._class_errors(emb[calib])
        codes = self._encode_categories(self.adata, ["labels"])["labels"][tr]
        counts = np.bincount(codes, minlength=len(self.classes_)).astype(np.float64)
        empirical = np.log((counts + 1.0) / (counts.sum() + len(counts)))
        uniform_prior = np.zeros_like(empirical)
        choice = self.init_params_["class_prior"]
        if choice == "auto":  # the prior with the higher validation macro F1 (ties: uniform)
            from ..metrics import macro_f1

            f1 = {}
            for name, lp in (("uniform", uniform_prior), ("empirical", empirical)):
                t = fit_temperature(-errors, y, log_prior=lp)
                f1[name] = macro_f1(y, (-errors / t + lp).argmax(axis=1))
            choice = "empirical" if f1["empirical"] > f1["uniform"] else "uniform"
        self.class_prior_ = choice
        self.log_prior_ = empirical if choice == "empirical" else uniform_prior
        self.temperature_ = fit_temperature(-errors, y, log_prior=self.log_prior_)
        self.train_params_ = {
            **(self.train_params_ or {}),
            "timestep_range": list(self.timestep_range_),
            "timestep_weights": [round(float(v), 4) for v in self.timestep_weights_],
            "temperature": self.temperature_,
            "class_prior": self.class_prior_,
            **({"encoder": self._encoder_fit} if oof is not None else {}),
        }

    def _fit_logreg_encoder(self, prepared: Any, tr: np.ndarray) -> np.ndarray:
        """Cross-fit the logistic regressions of the ``"logreg"`` encoder on the training cells ``tr``.

        Stores the mean affine map in ``module.encoder``, the fold of each training cell in
        ``encoder_folds_`` and returns the out-of-fold logits ``(len(tr), n_embedding)`` of the training cells.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        classes = self.classes_
        y = self._encode_categories(self.adata, ["labels"])["labels"][tr]
        counts = np.bincount(y, minlength=len(classes))
        few = {classes[c]: int(counts[c]) for c in np.flatnonzero(counts < 2)}
        if few:
            msg = (
                f"the 'logreg' encoder cross-fits logistic regressions on the training cells, and every fold "
                f"model must see every class, so each class needs at least 2 training cells; these have fewer: "
                f"{few}. Add training cells of these classes (train_indices), remove them from the AnnData "
                f"before setup_anndata, or use encoder='tabnet' or an embedding_key."
            )
            raise ValueError(msg)
        # a class with fewer cells than folds has one cell held out in as many folds as it has cells;
        # scikit-learn needs at least one class with >= n_folds cells
        n_folds = int(min(self.init_params_["n_folds"], counts.max(), len(tr)))
        opts = {**_LOGREG_DEFAULTS, **(self.init_params_["encoder_kwargs"] or {})}
        x = log_normalize(prepared.adata.X, scale=self.setup_.scale)[tr]
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=settings.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The least populated class", UserWarning)
            splits = list(splitter.split(np.zeros(len(tr)), y))
        width = self.module.encoder.n_output
        oof = np.zeros((len(tr), width), dtype=np.float32)
        folds = np.full(self.adata.n_obs, -1, dtype=np.int64)
        coefs, intercepts, n_iter = [], [], []
        for k, (fit, held) in enumerate(splits):
            clf = LogisticRegression(C=float(opts["C"]), max_iter=int(opts["max_iter"]))
            clf.fit(x[fit], y[fit])
            if not np.array_equal(clf.classes_, np.arange(len(classes))):  # pragma: no cover - guarded above
                raise RuntimeError(f"fold {k} saw classes {clf.classes_.tolist()}, not all {len(classes)}.")
            coefs.append(clf.coef_)
            intercepts.append(clf.intercept_)
            n_iter.append(int(np.max(clf.n_iter_)))
            oof[held] = np.asarray(clf.decision_function(x[held]), dtype=np.float64).reshape(len(held), width)
            folds[tr[held]] = k
        self.module.encoder.set_weights(
            torch.from_numpy(np.mean(coefs, axis=0)), torch.from_numpy(np.mean(intercepts, axis=0))
        )
        self.encoder_folds_ = folds
        self._encoder_fit = {"n_folds": n_folds, "C": float(opts["C"]), "max_iter": int(opts["max_iter"])}
        self._encoder_fit["n_iter"] = n_iter
        return oof

    def _make_datamodule(
        self, prepared: Any, train_indices: np.ndarray, validation_indices: np.ndarray, *, batch_size: int
    ) -> Any:
        """Batches of the precomputed embeddings (``"logreg"`` encoder: out-of-fold for the training cells)
        and labels while the denoiser trains on them; the base class's loaders otherwise."""
        emb = getattr(self, "_fixed_embedding", None)
        if emb is None:
            return super()._make_datamodule(
                prepared, train_indices, validation_indices, batch_size=batch_size
            )
        from torch.utils.data import BatchSampler, DataLoader, SubsetRandomSampler

        from ..train import IndexDataModule

        labels = self._encode_categories(self.adata, ["labels"])["labels"]
        data = _BatchDict(
            {
                "embedding": torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)),
                "labels": torch.from_numpy(labels.astype(np.float32))[:, None],
            }
        )

        def make(indices: np.ndarray, shuffle: bool) -> DataLoader:  # noqa: FBT001
            idx = [int(i) for i in indices]
            sampler = BatchSampler(
                SubsetRandomSampler(idx) if shuffle else idx,
                batch_size,
                drop_last=shuffle and len(idx) > batch_size,
            )
            return DataLoader(data, sampler=sampler, batch_size=None)

        return IndexDataModule(make, train_indices, validation_indices)

    def _select_timestep_range(self, emb: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """The candidate window whose scores give the lowest class-balanced validation NLL (after fitting a
        temperature for each), from per-timestep errors on a grid of 40 timesteps."""
        T = self.module.score.n_timesteps
        grid = self.module.score.eval_timesteps(40).cpu()
        per_t = self._class_errors(emb, timesteps=grid, per_timestep=True)  # (n, 40, c)
        frac = grid.numpy() / T
        best, best_nll = (0.0, 1.0), np.inf
        for lo, hi in _WINDOWS:
            sel = (frac >= lo) & (frac < hi)
            if not sel.any():
                continue
            scores = -per_t[:, sel].mean(axis=1)
            nll = _balanced_nll(scores, y, fit_temperature(scores, y))
            if nll < best_nll - 1e-9:
                best, best_nll = (lo, hi), nll
        return best

    # ------------------------------------------------------------------ inference
    def _embeddings(self, prepared: Any, *, batch_size: int) -> np.ndarray:
        return self._module_outputs(prepared, self.module.embed, batch_size=batch_size)

    def _scoring_timesteps(self) -> torch.Tensor:
        """Centres of ``n_eval_timesteps`` equal bins of ``[lo·T, hi·T)``."""
        T = self.module.score.n_timesteps
        lo, hi = self.timestep_range_
        edges = torch.linspace(lo * T, hi * T, int(self.init_params_["n_eval_timesteps"]) + 1)
        return ((edges[:-1] + edges[1:]) / 2).long().clamp(0, T - 1)

    def _class_errors(
        self,
        emb: np.ndarray,
        *,
        batch_size: int = 256,
        timesteps: torch.Tensor | None = None,
        per_timestep: bool = False,
    ) -> np.ndarray:
        weighted = timesteps is None and not per_timestep
        ts = self._scoring_timesteps() if timesteps is None else timesteps
        w = torch.as_tensor(np.asarray(self.timestep_weights_), dtype=torch.float32)
        self.module.eval()
        score = self.module.score
        out = []
        with torch.no_grad():
            for start in range(0, emb.shape[0], batch_size):
                x = torch.from_numpy(np.ascontiguousarray(emb[start : start + batch_size]))
                # each cell's noise is a function of the cell: its score does not depend on the rest of the query
                noise = score.scoring_noise(x, len(ts), int(self.init_params_["n_noise"]), seed=settings.seed)
                err = score.class_errors(
                    x.to(self.device),
                    timesteps=ts.to(self.device),
                    noise=noise,
                    per_timestep=per_timestep or weighted,
                ).cpu()
                if weighted:  # weighted mean over the scoring timesteps
                    err = (err * w[None, :, None]).sum(dim=1) / w.sum()
                out.append(err)
        return torch.cat(out).numpy().astype(np.float64)

    def _probabilities(self, prepared: Any, *, batch_size: int) -> np.ndarray:
        z = -self._class_errors(self._embeddings(prepared, batch_size=batch_size)) / self.temperature_
        z += self.log_prior_[None, :]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def get_class_scores(self, adata: AnnData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """SCORE class scores: negative expected denoising error of every cell under every class.

        Parameters
        ----------
        adata
            Cells (default: the training AnnData).
        batch_size
            Cells per encoder pass.

        Returns
        -------
        ``(n_cells, n_classes)`` scores (higher = more likely), columns in the order of :attr:`classes_`.
        """
        self._check_trained()
        prepared = self._prepare(adata, keys=self._input_keys())
        return -self._class_errors(self._embeddings(prepared, batch_size=batch_size))

    def get_embedding(self, adata: AnnData | None = None, *, batch_size: int = 1024) -> np.ndarray:
        """The embedding the diffusion model scores (encoder output, or the registered ``obsm`` matrix).

        With the ``"logreg"`` encoder this is the mean of the cross-fitted logistic regressions' logits,
        ``W̄ x + b̄``, for every cell — the embedding used for validation cells and new data. The training
        cells' own out-of-fold logits, on which the denoiser was trained, differ from it (each comes from the
        one fold model that did not see the cell) and are not returned here.

        Parameters
        ----------
        adata
            Cells (default: the training AnnData).
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(n_cells, n_embedding)`` array (``"logreg"``: class logits in the order of :attr:`classes_`, a
        single column — the logit of the second class — for two classes).
        """
        self._check_trained()
        return self._embeddings(self._prepare(adata, keys=self._input_keys()), batch_size=batch_size)

    # ------------------------------------------------------------------ persistence
    def _extra_metadata(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature_,
            "timestep_range": list(self.timestep_range_),
            "timestep_weights": [float(v) for v in self.timestep_weights_],
            "class_prior": self.class_prior_,
            "log_prior": [float(v) for v in self.log_prior_],
        }

    def _set_extra_metadata(self, meta: Mapping[str, Any]) -> None:
        self.encoder_folds_ = None  # training-time record, not saved
        self._fixed_embedding = None
        self.temperature_ = float(meta.get("temperature", 1.0))
        lo, hi = meta.get("timestep_range", (0.0, 1.0))
        self.timestep_range_ = (float(lo), float(hi))
        n_t = int(self.init_params_["n_eval_timesteps"])
        self.timestep_weights_ = np.asarray(meta.get("timestep_weights", np.ones(n_t)), dtype=np.float64)
        self.class_prior_ = str(meta.get("class_prior", "uniform"))
        n_c = len(self.vocab_["labels"])
        self.log_prior_ = np.asarray(meta.get("log_prior", np.zeros(n_c)), dtype=np.float64)
