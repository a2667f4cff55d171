"""ScoreDiffusion: conditional score-based diffusion over expression (scIDiff, seed 002)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._settings import settings
from .._utils import check_keys, to_dense
from ..module._score_net import ScoreDiffusionModule
from ..nn._diffusion import ddim_invert, ddim_sample, sample, sampling_timesteps
from ._perturbation_base import (
    PERTURBATION_REGISTRY_KEY,
    PerturbationModel,
    UnknownPerturbationError,
    covariate_registry_key,
)

__all__ = ["ScoreDiffusion"]

Method = Literal["ddpm", "ddim", "sde", "ode"]


class ScoreDiffusion(PerturbationModel):
    """Conditional score-based diffusion model of log-normalized expression (scIDiff).

    A variance-preserving DDPM / score-SDE (Ho et al. 2020; Song et al. 2021) over standardised expression
    (``space="expression"``) or over the latent of an autoencoder trained first (``space="latent"``, as in
    scDiffusion, Luo et al. 2024). The noise-prediction network is a residual MLP with a sinusoidal time
    embedding and one embedding per categorical condition, trained with condition dropout, so sampling can
    use classifier-free guidance (Ho & Salimans 2022). Uses:

    - :meth:`generate` cells under given conditions (DDPM ancestral, DDIM, Euler–Maruyama SDE or
      probability-flow ODE; steps and guidance chosen at sampling time);
    - :meth:`denoise` cells (noise to ``t_start``, run back; SDEdit, Meng et al. 2022);
    - :meth:`predict_perturbation`: DDIM inversion of source cells under their own condition, regeneration
      under the target condition (per cell); :meth:`get_perturbation_profiles` for the evaluation harness;
    - :meth:`design`: sampling steered towards a phenotype (``{"IL2RA": "up", "PDCD1": "down"}``) or a target
      profile by gradient guidance on the denoised estimate, scoring each designed cell.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    space
        ``"expression"`` (diffuse standardised genes) or ``"latent"`` (diffuse an autoencoder latent).
    n_latent
        Latent size for ``space="latent"``.
    n_hidden, n_layers, n_emb
        Width, residual blocks and embedding size of the score network.
    n_steps
        Diffusion steps ``T``.
    schedule
        ``"cosine"`` or ``"linear"`` noise schedule.
    cond_dropout
        Probability of dropping each condition (and all conditions) in training.
    dropout
        Dropout inside the residual blocks.
    ae_hidden
        Hidden width of the autoencoder (``space="latent"``).
    ae_likelihood
        Observation model of the autoencoder (``space="latent"``). ``"mse"`` (default): the decoder gives
        the mean expression of a latent (scDiffusion), so generated cells lack per-cell measurement noise.
        ``"nb"``: a negative-binomial count likelihood with library size (as in scVI), needs log1p-normalized
        counts (``log1p(counts * s)`` per cell, checked in :meth:`train`); :meth:`generate` then draws counts
        from it and returns their log-normalized values (``observation="sample"``). The gene dispersions and
        the covariance of the cell totals are set to their maximum-likelihood values given the decoder at the
        end of the autoencoder stage (the output layers start at the data's mean profile and totals). See
        ``ExpressionAutoencoder`` in ``scpredict.module._score_net``.

    Examples
    --------
    >>> sp.models.ScoreDiffusion.setup_anndata(adata, condition_keys=["cell_type", "condition"],
    ...                                        perturbation_key="condition", control="control")
    >>> model = sp.models.ScoreDiffusion(adata)
    >>> model.train(max_epochs=200)
    >>> fake = model.generate(500, conditions={"cell_type": "CD4T", "condition": "stimulated"})
    >>> model.predict_perturbation(adata, target={"condition": "stimulated"}, key_added="stim")
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        space: Literal["expression", "latent"] = "expression",
        n_latent: int = 64,
        n_hidden: int = 512,
        n_layers: int = 4,
        n_emb: int = 128,
        n_steps: int = 1000,
        schedule: Literal["linear", "cosine"] = "cosine",
        cond_dropout: float = 0.1,
        dropout: float = 0.0,
        ae_hidden: int = 512,
        ae_likelihood: Literal["mse", "nb"] = "mse",
    ) -> None:
        if ae_likelihood not in ("mse", "nb"):
            raise ValueError(f"ae_likelihood must be 'mse' or 'nb', got {ae_likelihood!r}.")
        if ae_likelihood == "nb" and space != "latent":
            raise ValueError("ae_likelihood='nb' needs space='latent'.")
        super().__init__(
            adata,
            space=space,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_emb=n_emb,
            n_steps=n_steps,
            schedule=schedule,
            cond_dropout=cond_dropout,
            dropout=dropout,
            ae_hidden=ae_hidden,
            ae_likelihood=ae_likelihood,
        )
        self.module = self._build_module()

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(  # type: ignore[override]
        cls,
        adata: AnnData,
        *,
        condition_keys: str | Sequence[str],
        perturbation_key: str | None = None,
        control: str = "control",
        layer: str | None = None,
    ) -> None:
        """Register the conditions and the log-normalized expression of ``adata``.

        Parameters
        ----------
        adata
            Cells; the layer must hold log-normalized values (checked; nothing is written when a check fails).
        condition_keys
            Categorical ``obs`` columns the model is conditioned on (e.g. ``["cell_type", "condition"]``).
        perturbation_key
            One of ``condition_keys`` holding perturbation labels, needed by :meth:`get_perturbation_profiles`
            and ``predict`` (the other condition keys become its covariates); ``None`` for a model that only
            generates, denoises, designs and translates between conditions.
        control
            Label of control cells in ``perturbation_key``.
        layer
            Layer of log-normalized expression (``None`` = ``X``).

        Returns
        -------
        ``None``; writes ``adata.uns['_scpredict']['ScoreDiffusion']`` (the JSON setup record).
        """
        keys = [condition_keys] if isinstance(condition_keys, str) else [str(c) for c in condition_keys]
        if len(set(keys)) != len(keys):
            raise ValueError(f"condition_keys has duplicates: {keys}.")
        check_keys(adata, obs=keys)
        extra = {"condition_keys": keys}
        if perturbation_key is not None:
            if perturbation_key not in keys:
                raise ValueError(
                    f"perturbation_key {perturbation_key!r} must be one of condition_keys {keys}."
                )
            covs = [k for k in keys if k != perturbation_key]
            cls._setup_perturbation(
                adata, perturbation_key=perturbation_key, control=control, covariate_keys=covs, layer=layer,
                extra=extra,
            )  # fmt: skip
        else:
            cls._setup(
                adata,
                layer=layer,
                scale="log1p",
                categorical={covariate_registry_key(k): k for k in keys},
                extra={**extra, "perturbation_key": None, "control": None, "covariate_keys": keys},
            )

    @property
    def condition_keys(self) -> list[str]:
        """``obs`` columns the model is conditioned on."""
        return list(self.setup_.extra["condition_keys"])

    def _registry_key(self, column: str) -> str:
        pk = self.setup_.extra.get("perturbation_key")
        return PERTURBATION_REGISTRY_KEY if column == pk else covariate_registry_key(column)

    def condition_values(self, key: str) -> list[str]:
        """Values of condition ``key`` seen in training.

        Parameters
        ----------
        key
            One of :attr:`condition_keys`.

        Returns
        -------
        The known values.
        """
        if key not in self.condition_keys:
            raise KeyError(f"{key!r} is not a condition of this model (conditions: {self.condition_keys}).")
        return list(self.vocab_[self._registry_key(key)])

    def _build_module(self) -> ScoreDiffusionModule:
        p = dict(self.init_params_)
        reg = [self._registry_key(k) for k in self.condition_keys]
        return ScoreDiffusionModule(self.n_vars, [len(self.vocab_[r]) for r in reg], cond_keys=reg, **p)

    # ------------------------------------------------------------------ training
    def _make_datamodule(self, prepared: Any, train_indices: np.ndarray, validation_indices: np.ndarray, *,
                         batch_size: int):  # fmt: skip
        """In-memory tensor batches (the diffusion loss needs many cheap steps); streamed data uses the base."""
        if getattr(prepared, "is_stream", False):
            return super()._make_datamodule(
                prepared, train_indices, validation_indices, batch_size=batch_size
            )
        from torch.utils.data import DataLoader

        from ..train import IndexDataModule

        x = torch.as_tensor(to_dense(prepared.adata.X), dtype=torch.float32)
        cols = {
            k: torch.as_tensor(prepared.adata.obs[k].to_numpy(np.float32)).reshape(-1, 1)
            for k in self.module.cond_keys
        }

        def make(indices: np.ndarray, *, shuffle: bool) -> DataLoader:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))

            def collate(pos: list[int]) -> dict[str, torch.Tensor]:
                rows = idx[torch.as_tensor(pos)]
                return {"X": x[rows], **{k: v[rows] for k, v in cols.items()}}

            return DataLoader(
                range(len(idx)), batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                drop_last=shuffle and len(idx) > batch_size,
            )  # fmt: skip

        return IndexDataModule(make, train_indices, validation_indices)

    def train(  # type: ignore[override]
        self,
        *,
        max_epochs: int = 200,
        ae_epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        early_stopping: bool = False,
        ema_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Train the autoencoder (``space="latent"``), then the score network (Lightning).

        Standardisation statistics and the clipping range of the denoised estimate are computed from the
        registered cells first.

        Parameters
        ----------
        max_epochs
            Epochs of the score network.
        ae_epochs
            Epochs of the autoencoder (``space="latent"`` only).
        batch_size, lr, early_stopping
            As in :meth:`BaseModel.train`; the diffusion loss is noisy, so early stopping is off by default.
        ema_decay
            Keep an exponential moving average of the score network's weights with this decay per step (e.g.
            0.999, as in Ho et al. 2020) and use it as the final weights; ``None`` keeps the last weights.
        **kwargs
            Passed to :meth:`BaseModel.train` (``train_indices``, ``accelerator``, ``logger``, ...).
        """
        m = self.module
        idx = kwargs.get("train_indices")
        x = self._expression(self.adata)
        x = x if idx is None else x[np.asarray(idx, dtype=np.int64)]
        if m.autoencoder is not None and m.autoencoder.likelihood == "nb":
            _check_counts(x, layer=self.setup_.layer)
            m.autoencoder.init_from_data(torch.as_tensor(x, dtype=torch.float32))
        mean, std = x.mean(0), x.std(0)
        m.data_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        m.data_std.copy_(torch.as_tensor(np.maximum(std, 0.05), dtype=torch.float32))
        history: dict[str, pd.DataFrame] = {}
        if m.autoencoder is not None:
            ae_kwargs = {**kwargs, "plan_kwargs": {"loss_kwargs": {"stage": "autoencoder"}}}
            super().train(
                max_epochs=ae_epochs, batch_size=batch_size, lr=lr, early_stopping=early_stopping, **ae_kwargs
            )
            history = {f"autoencoder_{k}": v for k, v in self.history_.items()}
            with torch.no_grad():
                z = m.autoencoder.encoder(torch.as_tensor(x, dtype=torch.float32))
                m.autoencoder.latent_mean.copy_(z.mean(0))
                m.autoencoder.latent_std.copy_(z.std(0).clamp(min=1e-3))
            if m.autoencoder.likelihood == "nb":  # dispersions and depth covariance at their ML values
                m.autoencoder.fit_observation_noise(torch.as_tensor(x, dtype=torch.float32))
        with torch.no_grad():
            y = m.to_diffusion(torch.as_tensor(x, dtype=torch.float32))
            lo, hi = y.min(0).values, y.max(0).values
            margin = 0.1 * (hi - lo) + 1e-3
            m.clip_low.copy_(lo - margin)
            m.clip_high.copy_(hi + margin)
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise ValueError(f"ema_decay must be in (0, 1), got {ema_decay}.")
            from scpredict.train import WeightEMA

            net = m.net
            ema = WeightEMA(
                ema_decay, tensors=lambda _: list(net.parameters()), warmup=True, swap_for_validation=False
            )
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), ema]
        super().train(
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, early_stopping=early_stopping, **kwargs
        )
        self.history_ = {**history, **self.history_}

    # ------------------------------------------------------------------ conditions
    def _codes(self, table: pd.DataFrame) -> torch.Tensor:
        """Condition codes (n, n_fields) from a table with (some of) the condition columns; a missing column
        or a ``None`` value is the null (unconditional) code. Unknown values raise, naming them."""
        n = len(table)
        cols = []
        for key in self.condition_keys:
            vocab = self.condition_values(key)
            if key not in table.columns:
                cols.append(np.full(n, len(vocab)))
                continue
            raw = table[key]
            null = raw.isna().to_numpy()
            values = raw.astype(str).to_numpy()
            idx = pd.Index(vocab).get_indexer(values)
            bad = sorted(set(values[(idx < 0) & ~null]))
            if bad:
                raise UnknownPerturbationError(
                    f"condition {key!r} has values not seen in training: {bad[:10]} (known: {vocab[:20]})."
                )
            cols.append(np.where(null, len(vocab), idx))
        return torch.as_tensor(np.stack(cols, axis=1) if cols else np.zeros((n, 0)), dtype=torch.long)

    def _condition_table(self, conditions: Mapping[str, Any] | pd.DataFrame | None, n: int) -> pd.DataFrame:
        if isinstance(conditions, pd.DataFrame):
            table = conditions.reset_index(drop=True)
        else:
            table = pd.DataFrame(index=range(n))
            for key, value in dict(conditions or {}).items():
                values = [value] * n if isinstance(value, str) or np.isscalar(value) else list(value)
                if len(values) != n:
                    raise ValueError(f"conditions[{key!r}] has {len(values)} values for {n} cells.")
                table[key] = values
        unknown = sorted(set(table.columns) - set(self.condition_keys))
        if unknown:
            raise KeyError(f"conditions {unknown} are not conditions of this model ({self.condition_keys}).")
        return table

    def _generator(self, seed: int | None) -> torch.Generator:
        return torch.Generator().manual_seed(settings.seed if seed is None else int(seed))

    def _check_trained(self) -> None:
        if not self.is_trained_:
            raise RuntimeError("ScoreDiffusion is not trained; call model.train() first.")

    # ------------------------------------------------------------------ core sampling (numpy in / out)
    @torch.no_grad()
    def _sample(
        self, cond: torch.Tensor, *, method: Method, n_steps: int, guidance_scale: float, eta: float = 0.0,
        generator: torch.Generator, batch_size: int = 1024, y_start: torch.Tensor | None = None,
        t_start: int | None = None, observation: bool = False,
    ) -> np.ndarray:  # fmt: skip
        m = self.module.eval()
        rng = (
            np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            if observation
            else None
        )
        out = []
        for s in range(0, len(cond), batch_size):
            c = cond[s : s + batch_size]
            y = (
                torch.randn(len(c), m.n_diffusion, generator=generator)
                if y_start is None
                else y_start[s : s + len(c)]
            )
            y = sample(
                m.guided_eps(c, guidance_scale), m.schedule, y, method=method, n_steps=n_steps, t_start=t_start,
                eta=eta, generator=generator, clip_x0=m.clip_range,
            )  # fmt: skip
            out.append(m.sample_observation(y, rng) if observation else m.from_diffusion(y).clamp(min=0))
        return torch.cat(out).numpy() if out else np.zeros((0, self.n_vars), dtype=np.float32)

    @torch.no_grad()
    def _translate(
        self, x: np.ndarray, source: torch.Tensor, target: torch.Tensor, *, n_steps: int, guidance_scale: float,
        strength: float, batch_size: int = 1024,
    ) -> np.ndarray:  # fmt: skip
        m = self.module.eval()
        t_end = max(1, round(strength * m.schedule.t_max))
        out = []
        for s in range(0, len(x), batch_size):
            y = m.to_diffusion(torch.as_tensor(x[s : s + batch_size], dtype=torch.float32))
            z = ddim_invert(
                m.guided_eps(source[s : s + batch_size], 1.0),
                m.schedule,
                y,
                n_steps=n_steps,
                t_end=t_end,
                n_fixed_point=2,
            )
            eps = m.guided_eps(target[s : s + batch_size], guidance_scale)
            y = ddim_sample(eps, m.schedule, z, n_steps=n_steps, t_start=t_end, clip_x0=m.clip_range)
            out.append(m.from_diffusion(y).clamp(min=0))
        return torch.cat(out).numpy()

    # ------------------------------------------------------------------ generation and denoising
    def generate(
        self,
        n: int,
        *,
        conditions: Mapping[str, Any] | pd.DataFrame | None = None,
        method: Method = "ddim",
        n_steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        seed: int | None = None,
        observation: Literal["mean", "sample"] | None = None,
    ) -> AnnData:
        """Generate ``n`` cells under the given conditions.

        Parameters
        ----------
        n
            Number of cells.
        conditions
            ``{condition_key: value}`` (one value for all cells) or ``{key: [value per cell]}`` or a DataFrame;
            a condition left out is marginalised (the null embedding).
        method
            ``"ddim"``, ``"ddpm"`` (ancestral), ``"sde"`` (Euler–Maruyama) or ``"ode"`` (probability flow).
        n_steps
            Sampling steps.
        guidance_scale
            Classifier-free guidance weight (1 = plain conditional, > 1 sharper).
        eta
            DDIM stochasticity.
        seed
            Random seed (default ``sp.settings.seed``).
        observation
            ``"mean"``: the decoder's expression of each generated latent (no measurement noise);
            ``"sample"``: draw the observed cell from the count likelihood (needs ``ae_likelihood="nb"``).
            ``None``: ``"sample"`` for an ``ae_likelihood="nb"`` model, ``"mean"`` otherwise.

        Returns
        -------
        AnnData: ``X`` generated log-normalized expression (n, n_vars), ``obs`` the conditions, ``var`` the
        model's genes, ``uns['generate']`` the sampling parameters.
        """
        nb = self.init_params_.get("ae_likelihood", "mse") == "nb"
        observation = ("sample" if nb else "mean") if observation is None else observation
        if observation not in ("mean", "sample"):
            raise ValueError(f"observation must be 'mean' or 'sample', got {observation!r}.")
        if observation == "sample" and not nb:
            raise ValueError("observation='sample' needs a model with ae_likelihood='nb'.")
        self._check_trained()
        table = self._condition_table(conditions, n)
        cond = self._codes(table)
        x = self._sample(
            cond,
            method=method,
            n_steps=n_steps,
            guidance_scale=guidance_scale,
            eta=eta,
            generator=self._generator(seed),
            observation=observation == "sample",
        )
        obs = table.astype(str).astype("category")
        obs.index = pd.Index([f"generated-{i}" for i in range(n)])
        params = {"method": method, "n_steps": n_steps, "guidance_scale": guidance_scale, "eta": eta,
                  "observation": observation}  # fmt: skip
        return AnnData(
            X=x, obs=obs, var=pd.DataFrame(index=pd.Index(self.var_names_)), uns={"generate": params}
        )

    def get_denoised(
        self,
        adata: AnnData | None = None,
        *,
        t_start: int | float = 0.3,
        n_steps: int = 50,
        n_samples: int = 1,
        method: Method = "ddpm",
        depth_factor: float | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Denoised expression (never mutates); see :meth:`denoise`.

        Returns
        -------
        Array (n_obs, n_vars) in the model's gene order.
        """
        self._check_trained()
        adata = self.adata if adata is None else adata
        m = self.module.eval()
        t0 = int(round(t_start * m.schedule.t_max)) if isinstance(t_start, float) else int(t_start)
        x = self._expression(adata)
        present = [k for k in self.condition_keys if k in adata.obs.columns]
        cond = self._codes(adata.obs[present].reset_index(drop=True))
        g = self._generator(seed)
        with torch.no_grad():
            y0 = m.to_diffusion(torch.as_tensor(x, dtype=torch.float32))
        total = np.zeros(x.shape, dtype=np.float64)
        for _ in range(n_samples):
            noise = torch.randn(y0.shape, generator=g)
            y_t = m.schedule.q_sample(y0, torch.full((len(y0),), t0), noise)
            total += self._sample(cond, method=method, n_steps=n_steps, guidance_scale=1.0, generator=g,
                                  y_start=y_t, t_start=t0)  # fmt: skip
        prior = total / n_samples
        if depth_factor is not None:
            prior = combine_with_observation(prior, x, depth_factor=depth_factor)
        return prior.astype(np.float32)

    def denoise(
        self,
        adata: AnnData | None = None,
        *,
        t_start: int | float = 0.3,
        key_added: str = "score_diffusion_denoised",
        n_steps: int = 50,
        n_samples: int = 1,
        method: Method = "ddpm",
        depth_factor: float | None = None,
        seed: int | None = None,
    ) -> None:
        """Denoise cells: diffuse them forward to ``t_start`` and run the learned reverse process back.

        The average of ``n_samples`` reverse runs estimates the posterior mean ``E[x_0 | x_t]`` of the
        cell (SDEdit, Meng et al. 2022). This estimate is pulled to the manifold of training cells and
        discards what the cell's own measurement says beyond it. With ``depth_factor`` set, the
        measurement is put back by empirical Bayes (``combine_with_observation`` in this module): the
        diffusion estimate is the prior, the observed values are the likelihood, with Poisson sampling
        noise at the cell's sequencing depth. ``depth_factor=inf`` gives the posterior mean of the expression. A finite ``f`` gives the
        posterior predictive of the profile if the same cell were sequenced ``f`` times deeper, which still
        contains the molecules already observed (e.g. ``f = 5`` for counts that were subsampled to 20%).

        Parameters
        ----------
        adata
            Cells (default: the training data); their condition columns are used where present.
        t_start
            How far to noise: a step index (int) or a fraction of the schedule (float in ``(0, 1]``).
        key_added
            Layer and ``uns`` key written.
        n_steps
            Reverse steps (over ``t_start .. 0``).
        n_samples
            Independent runs averaged (a posterior-mean estimate).
        method
            Reverse sampler.
        depth_factor
            ``None``: the diffusion estimate alone. A number ``f >= 1``: combine it with the observed values
            (weight of the observation ``1/f + (1 - 1/f) w``, with ``w`` the empirical-Bayes shrinkage
            weight); ``float("inf")`` is the posterior mean of the expression. Needs log1p-normalized counts
            (each cell's depth is read off its smallest non-zero value, one molecule), and enough cells in
            ``adata`` (tens or more) to estimate the per-gene prior variance.
        seed
            Random seed.

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : float32 (n_obs, n_vars) denoised log-normalized expression in
          ``adata.var_names`` order (NaN for genes the model lacks)
        - ``adata.uns[key_added]`` : parameters and provenance
        """
        adata = self.adata if adata is None else adata
        values = self.get_denoised(
            adata, t_start=t_start, n_steps=n_steps, n_samples=n_samples, method=method,
            depth_factor=depth_factor, seed=seed,
        )  # fmt: skip
        adata.layers[key_added] = self._to_query_genes(values, adata)
        self._record(adata, key_added, {"t_start": t_start, "n_steps": n_steps, "n_samples": n_samples,
                                        "method": method, "depth_factor": depth_factor})  # fmt: skip

    # ------------------------------------------------------------------ perturbation
    def get_perturbation(
        self,
        adata: AnnData,
        *,
        target: Mapping[str, str],
        n_steps: int = 50,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
    ) -> np.ndarray:
        """Each cell moved to the ``target`` condition (never mutates); see :meth:`predict_perturbation`.

        Returns
        -------
        Array (n_obs, n_vars) in the model's gene order.
        """
        self._check_trained()
        check_keys(adata, obs=self.condition_keys)
        if not target:
            raise ValueError("target must name at least one condition, e.g. {'condition': 'stimulated'}.")
        source = adata.obs[self.condition_keys].reset_index(drop=True)
        tgt = source.copy()
        for key, value in target.items():
            if key not in self.condition_keys:
                raise KeyError(
                    f"{key!r} is not a condition of this model (conditions: {self.condition_keys})."
                )
            tgt[key] = str(value)
        src_codes, tgt_codes = self._codes(source.astype(str)), self._codes(tgt.astype(str))
        x = self._expression(adata)
        return self._translate(
            x, src_codes, tgt_codes, n_steps=n_steps, guidance_scale=guidance_scale, strength=strength
        )

    def predict_perturbation(
        self,
        adata: AnnData,
        *,
        target: Mapping[str, str],
        key_added: str = "score_diffusion_perturbation",
        n_steps: int = 50,
        guidance_scale: float = 1.0,
        strength: float = 1.0,
    ) -> None:
        """Predict each cell under a target condition: DDIM inversion, then regeneration under the target.

        The source cell is inverted (probability-flow ODE, its own conditions) to step ``strength * T`` and
        regenerated deterministically with the conditions in ``target`` replaced, so cell-specific variation
        carried by the latent is kept while the condition changes.

        Parameters
        ----------
        adata
            Source cells with all condition columns.
        target
            Conditions to set, e.g. ``{"condition": "stimulated"}``; others stay as each cell's own.
        key_added
            Layer and ``uns`` key written.
        n_steps
            DDIM steps of the inversion and of the regeneration.
        guidance_scale
            Classifier-free guidance weight of the regeneration.
        strength
            Fraction of the diffusion inverted (1 = to noise; smaller keeps more of the source).

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : float32 (n_obs, n_vars) predicted log-normalized expression in
          ``adata.var_names`` order (NaN for genes the model lacks)
        - ``adata.uns[key_added]`` : target, parameters and provenance
        """
        values = self.get_perturbation(
            adata, target=target, n_steps=n_steps, guidance_scale=guidance_scale, strength=strength
        )
        adata.layers[key_added] = self._to_query_genes(values, adata)
        self._record(adata, key_added, {"target": dict(target), "n_steps": n_steps,
                                        "guidance_scale": guidance_scale, "strength": strength})  # fmt: skip

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        if self.setup_.extra.get("perturbation_key") is None:
            raise ValueError(
                "this ScoreDiffusion was set up without perturbation_key; use predict_perturbation."
            )
        cond = conditions.rename(columns={PERTURBATION_REGISTRY_KEY: self.perturbation_key})
        out = np.zeros((len(cond), self.n_vars), dtype=np.float64)
        for i, row in enumerate(cond.itertuples(index=False)):
            row = dict(zip(cond.columns, row, strict=True))
            ctrl = None
            if self.adata is not None:  # translate the training controls of the same covariates
                obs = self.adata.obs
                mask = obs[self.perturbation_key].astype(str).to_numpy() == self.control
                for key in self.covariate_keys:
                    mask &= obs[key].astype(str).to_numpy() == str(row[key])
                ctrl = self.adata[mask] if mask.any() else None
            if ctrl is not None:
                x = self.get_perturbation(ctrl, target={self.perturbation_key: row[self.perturbation_key]})
            else:
                x = self.generate(200, conditions={k: str(v) for k, v in row.items()}).X
            out[i] = np.asarray(x).mean(0)
        return out

    def _predict_cells(self, conditions: pd.DataFrame) -> np.ndarray:
        table = conditions.rename(columns={PERTURBATION_REGISTRY_KEY: self.perturbation_key})
        return self.generate(len(table), conditions=table).X

    def get_perturbation_profiles(
        self,
        perturbations: Sequence[str],
        *,
        covariates: Mapping[str, str | Sequence[str]] | pd.DataFrame | None = None,
    ) -> AnnData:
        """Predicted mean log-normalized profile of each condition (training controls of the same covariates
        translated to the perturbation by :meth:`predict_perturbation`; generated cells when the model has no
        AnnData). See :meth:`PerturbationModel.get_perturbation_profiles`.

        Parameters
        ----------
        perturbations
            Perturbation labels.
        covariates
            Covariate values (``{key: value}``, ``{key: [values]}`` or a DataFrame).

        Returns
        -------
        AnnData, one row per condition (see the base class).
        """
        if self.setup_.extra.get("perturbation_key") is None:
            raise ValueError("set up with perturbation_key=... to predict perturbation profiles.")
        return super().get_perturbation_profiles(perturbations, covariates=covariates)

    # ------------------------------------------------------------------ inverse design
    def design(
        self,
        target: Mapping[str, Any] | pd.Series,
        *,
        n: int = 100,
        guidance_scale: float = 1.0,
        conditions: Mapping[str, Any] | None = None,
        reference: AnnData | None = None,
        n_steps: int = 50,
        condition_scale: float = 1.0,
        seed: int | None = None,
    ) -> AnnData:
        """Inverse design: generate cells steered towards a target phenotype.

        Parameters
        ----------
        target
            A phenotype ``{gene: "up" | "down"}`` or a target profile ``{gene: value}`` / Series of
            log-normalized values (any subset of the model's genes).
        n
            Number of designed cells.
        guidance_scale
            Strength of the steering (0 = plain conditional sampling).
        conditions
            Conditions of the sampler, e.g. ``{"cell_type": "CD4T"}`` (others marginalised).
        reference
            Source cells the phenotype is measured against (default: training cells matching
            ``conditions``).
        n_steps
            DDIM steps.
        condition_scale
            Classifier-free guidance weight of the conditions.
        seed
            Random seed.

        Returns
        -------
        AnnData of designed cells: ``X`` expression, ``obs['target_match']`` (phenotype: mean signed shift of
        the requested genes in reference standard deviations; profile: fraction of the reference-to-target
        gap closed, 1 = reached), ``obs`` conditions, ``var['reference_mean']``, ``var['design_logfc']``
        (designed minus reference mean), ``uns['design']`` (target, parameters, ``progress``: mean objective
        of the denoised estimate at each sampling step).
        """
        self._check_trained()
        m = self.module.eval()
        genes, kind, values = self._parse_target(target)
        ref = reference if reference is not None else self._reference(conditions)
        xr = self._expression(ref)
        mu, sd = xr.mean(0), np.maximum(xr.std(0), 0.05)
        gi = torch.as_tensor(genes)
        mu_t = torch.as_tensor(mu[genes], dtype=torch.float32)
        sd_t = torch.as_tensor(sd[genes], dtype=torch.float32)
        v_t = torch.as_tensor(values, dtype=torch.float32)

        def objective(x: torch.Tensor) -> torch.Tensor:
            z = (x[:, gi] - mu_t) / sd_t
            if kind == "phenotype":
                return torch.tanh(v_t * z).mean(1)  # saturates: no reward for leaving the data range
            return -(((x[:, gi] - v_t) / sd_t) ** 2).mean(1)

        table = self._condition_table(conditions, n)
        cond = self._codes(table)
        trace: list[float] = []
        eps = m.design_eps(
            cond, objective, design_scale=guidance_scale, guidance_scale=condition_scale, trace=trace
        )
        g = self._generator(seed)
        y = torch.randn(n, m.n_diffusion, generator=g)
        with torch.no_grad():
            y = ddim_sample(eps, m.schedule, y, n_steps=n_steps, clip_x0=m.clip_range)
            x = m.from_diffusion(y).clamp(min=0).numpy()
        match = self._target_match(x[:, genes], kind=kind, values=values, mu=mu[genes], sd=sd[genes])
        obs = table.astype(str).astype("category")
        obs.index = pd.Index([f"designed-{i}" for i in range(n)])
        obs["target_match"] = match
        var = pd.DataFrame(
            {"reference_mean": mu, "design_logfc": x.mean(0) - mu}, index=pd.Index(self.var_names_)
        )
        steps = sampling_timesteps(m.schedule, n_steps)
        info = {
            "target": {self.var_names_[g]: v for g, v in zip(genes, _target_values(kind, values), strict=True)},
            "kind": kind, "guidance_scale": guidance_scale, "condition_scale": condition_scale,
            "n_steps": n_steps, "conditions": {k: str(v) for k, v in dict(conditions or {}).items()},
            "progress": {"step": np.asarray(steps[: len(trace)]), "objective": np.asarray(trace)},
        }  # fmt: skip
        return AnnData(X=x, obs=obs, var=var, uns={"design": info})

    def _reference(self, conditions: Mapping[str, Any] | None) -> AnnData:
        if self.adata is None:
            raise ValueError("pass reference=<source cells>: this model was loaded without an AnnData.")
        mask = np.ones(self.adata.n_obs, dtype=bool)
        for key, value in dict(conditions or {}).items():
            mask &= self.adata.obs[key].astype(str).to_numpy() == str(value)
        if not mask.any():
            raise ValueError(f"no training cells match conditions {dict(conditions or {})}; pass reference=.")
        return self.adata[mask]

    def _parse_target(self, target: Mapping[str, Any] | pd.Series) -> tuple[np.ndarray, str, np.ndarray]:
        items = dict(target.items()) if isinstance(target, pd.Series) else dict(target)
        if not items:
            raise ValueError("target is empty; pass e.g. {'IL2RA': 'up', 'PDCD1': 'down'}.")
        missing = sorted(set(map(str, items)) - set(self.var_names_))
        if missing:
            raise KeyError(f"target genes not among the model's genes: {missing[:10]}.")
        idx = pd.Index(self.var_names_).get_indexer([str(k) for k in items])
        vals = list(items.values())
        if all(isinstance(v, str) for v in vals):
            bad = sorted({v for v in vals if v not in ("up", "down")})
            if bad:
                raise ValueError(f"phenotype directions must be 'up' or 'down', got {bad}.")
            return idx, "phenotype", np.array([1.0 if v == "up" else -1.0 for v in vals])
        if any(isinstance(v, str) for v in vals):
            raise ValueError("target mixes directions ('up'/'down') and values; use one kind.")
        return idx, "profile", np.asarray(vals, dtype=np.float64)

    @staticmethod
    def _target_match(
        x: np.ndarray, *, kind: str, values: np.ndarray, mu: np.ndarray, sd: np.ndarray
    ) -> np.ndarray:
        if kind == "phenotype":
            return ((x - mu) / sd * values).mean(1)
        gap = ((mu - values) ** 2).sum()
        return 1.0 - ((x - values) ** 2).sum(1) / max(gap, 1e-12)


def _target_values(kind: str, values: np.ndarray) -> list[Any]:
    """Target values as given by the user (``"up"``/``"down"`` for a phenotype)."""
    if kind == "phenotype":
        return ["up" if v > 0 else "down" for v in values]
    return [float(v) for v in values]


def _check_counts(x: np.ndarray, *, layer: str | None = None, tol: float = 0.05) -> None:
    """Raise unless every cell is ``log1p(counts * s)``: ``expm1(x) / s`` with ``s`` the cell's smallest non-zero
    ``expm1(x)`` (one molecule) must be whole numbers (``ae_likelihood="nb"`` recovers the counts this way)."""
    e = np.expm1(np.clip(np.asarray(x, dtype=np.float64), 0, None))
    s = np.where(e > 0, e, np.inf).min(1, keepdims=True)
    s = np.where(np.isfinite(s), s, 1.0)
    c = e / s
    bad = (np.abs(c - np.round(c)) > tol + 1e-5 * c).any(1)  # float32 rounding grows with the count
    if bad.any():
        raise ValueError(
            f"ae_likelihood='nb' needs log1p-normalized counts (log1p(counts * s) per cell); {int(bad.sum())} of "
            f"{len(x)} cells are not whole numbers of their smallest non-zero value (data read from "
            f"{'adata.X' if layer is None else f'adata.layers[{layer!r}]'}). Register log1p of normalized counts "
            "in setup_anndata(layer=...) (e.g. sc.pp.normalize_total then sc.pp.log1p on raw counts), or use "
            "ae_likelihood='mse'."
        )


def combine_with_observation(
    prior: np.ndarray,
    observed: np.ndarray,
    *,
    depth_factor: float = float("inf"),
    min_prior_var: float = 1e-4,
) -> np.ndarray:
    """Empirical-Bayes combination of a denoised (prior) estimate with the observed log-normalized counts.

    Each value is treated as Gaussian. The observation ``y`` of a cell with ``k = scale / library size``
    (``y = log1p(k c)``) has Poisson sampling variance ``sigma^2 = k exp(-m) (1 - exp(-m))`` at the prior
    mean ``m`` (delta method). ``k`` is read off the cell's smallest non-zero value, ``log1p(k)``, which is
    one molecule. The prior variance ``tau^2`` of each gene is estimated by moments over the cells,
    ``mean (y - m)^2 - mean sigma^2`` (floored at ``min_prior_var``), as in Efron & Morris' empirical
    Bayes. The posterior mean of the expression is ``m + w (y - m)`` with ``w = tau^2 / (tau^2 + sigma^2)``.
    The profile of the same cell at ``f`` times the depth keeps the observed molecules (a fraction ``1/f``).
    Its posterior predictive mean is ``m + (1/f + (1 - 1/f) w) (y - m)``, linearised in log space.

    Parameters
    ----------
    prior
        (n_cells, n_genes) denoised estimate, e.g. the diffusion posterior mean or a kNN average.
    observed
        (n_cells, n_genes) observed log1p-normalized counts of the same cells.
    depth_factor
        ``f >= 1``: the target depth relative to the observed one; ``inf`` is the expression itself.
    min_prior_var
        Floor of the per-gene prior variance.

    Returns
    -------
    (n_cells, n_genes) float64 combined estimate.
    """
    if depth_factor < 1:
        raise ValueError(f"depth_factor must be >= 1 (or inf), got {depth_factor}.")
    m = np.maximum(np.asarray(prior, dtype=np.float64), 0.0)
    y = np.asarray(observed, dtype=np.float64)
    if m.shape != y.shape:
        raise ValueError(f"prior {m.shape} and observed {y.shape} have different shapes.")
    smallest = np.where(y > 0, y, np.inf).min(1)
    k = np.expm1(np.where(np.isfinite(smallest), smallest, np.nan))
    k = np.where(np.isnan(k), np.nanmedian(k) if np.isfinite(k).any() else 1.0, k)[:, None]
    sig2 = k * np.exp(-m) * (1.0 - np.exp(-m))
    tau2 = np.maximum(((y - m) ** 2).mean(0) - sig2.mean(0), min_prior_var)[None, :]
    w = tau2 / (tau2 + sig2)
    own = 1.0 / depth_factor
    return m + (own + (1.0 - own) * w) * (y - m)
