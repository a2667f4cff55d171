"""A class-conditional diffusion model over cell embeddings (the generative half of "Keeping SCORE")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._settings import settings
from ..module._score import EmbeddingScoreModule
from ._base import BaseModel, checked_obsm, obsm_array

__all__ = ["EmbeddingDiffusion"]


class EmbeddingDiffusion(BaseModel):
    """DDPM over an ``obsm`` embedding, conditioned on a cell-type label (classifier-free guidance).

    The same denoiser as :class:`ScoreClassifier` (label dropout makes it both conditional and
    unconditional). Use it to sample embeddings of a class (:meth:`sample`), e.g. to augment rare cell types
    before training a classifier on the embedding (:meth:`get_augmented`).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    n_hidden
        Width of the denoiser.
    n_layers
        Residual blocks.
    n_timesteps
        Diffusion steps ``T``.
    noise_schedule
        ``"cosine"`` or ``"linear"``.
    p_uncond
        Label-dropout probability during training.
    dropout_rate
        Dropout inside the denoiser.

    Examples
    --------
    >>> import numpy as np, scpredict as sp
    >>> adata = sp.datasets.synthetic_celltypes(n_cells=200, n_genes=50)
    >>> adata.obsm["X_emb"] = np.log1p(adata.X[:, :8].toarray()).astype("float32")
    >>> sp.models.EmbeddingDiffusion.setup_anndata(adata, embedding_key="X_emb", labels_key="cell_type")
    >>> model = sp.models.EmbeddingDiffusion(adata, n_hidden=32)
    >>> model.train(max_epochs=2)
    >>> model.sample({"type0": 5}).obsm["X_emb"].shape
    (5, 8)
    """

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        embedding_key: str,
        labels_key: str | None = None,
        layer: str | None = None,
    ) -> None:
        """Register the embedding and (optionally) the class labels.

        Parameters
        ----------
        adata
            Training data.
        embedding_key
            ``obsm`` key of the embedding to model.
        labels_key
            ``obs`` column of the conditioning class (``None``: unconditional model).
        layer
            Expression layer (only checked for finiteness; not modelled).
        """

        checked_obsm(adata, embedding_key)
        cls._setup(
            adata,
            layer=layer,
            scale="any",
            categorical={"labels": labels_key},
            obsm={"embedding": embedding_key},
            extra={"embedding_key": embedding_key, "labels_key": labels_key},
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
    ) -> None:
        super().__init__(
            adata,
            n_hidden=n_hidden,
            n_layers=n_layers,
            n_timesteps=n_timesteps,
            noise_schedule=noise_schedule,
            p_uncond=p_uncond,
            dropout_rate=dropout_rate,
        )
        emb = obsm_array(adata, self.setup_.obsm["embedding"])
        self.extra_arrays_["n_embedding"] = np.array([emb.shape[1]], dtype=np.int64)
        self.module = self._build_module()

    @property
    def classes_(self) -> list[str]:
        """Conditioning classes (empty for an unconditional model)."""
        return list(self.vocab_.get("labels", []))

    def _build_module(self) -> EmbeddingScoreModule:
        return EmbeddingScoreModule(
            self.n_vars,
            len(self.classes_),
            n_embedding=int(self.extra_arrays_["n_embedding"][0]),
            **self.init_params_,
        )

    def train(self, *, max_epochs: int = 200, batch_size: int = 128, lr: float = 2e-3, **kwargs: Any) -> None:
        """Standardise the embedding on the training cells and train the denoiser with Lightning.

        Parameters
        ----------
        max_epochs
            Maximum epochs (early stopping on the validation denoising loss).
        batch_size
            Cells per batch.
        lr
            AdamW learning rate.
        **kwargs
            Passed to :meth:`BaseModel.train` (``train_size``, ``train_indices``, ``accelerator``, ...).
        """
        emb = obsm_array(self.adata, self.setup_.obsm["embedding"])
        tr, _ = self._train_split(len(emb), kwargs)
        ref = emb[tr]  # the cells BaseModel.train will fit on (the same split)
        std = ref.std(axis=0)
        self.module.score.set_standardization(
            torch.from_numpy(ref.mean(axis=0)), torch.from_numpy(np.where(std > 0, std, 1.0))
        )
        super().train(max_epochs=max_epochs, batch_size=batch_size, lr=lr, **kwargs)

    def _codes(
        self, labels: Sequence[str] | Mapping[str, int] | None, n: int | None
    ) -> tuple[np.ndarray, list]:
        if isinstance(labels, Mapping):
            labels = [k for k, v in labels.items() for _ in range(int(v))]
        if labels is None:
            if n is None:
                msg = "pass labels= (a list or {label: count}) or n= (unconditional samples)."
                raise ValueError(msg)
            return np.full(n, len(self.classes_), dtype=np.int64), ["unconditional"] * n
        labels = [str(v) for v in labels]
        idx = pd.Index(self.classes_).get_indexer(labels)
        if (idx < 0).any():
            bad = sorted({v for v, i in zip(labels, idx, strict=True) if i < 0})
            msg = f"labels not seen in training: {bad[:10]}; known: {self.classes_[:20]}."
            raise ValueError(msg)
        return idx.astype(np.int64), labels

    def sample(
        self,
        labels: Sequence[str] | Mapping[str, int] | None = None,
        *,
        n: int | None = None,
        guidance_scale: float = 0.0,
        n_sampling_steps: int = 50,
        seed: int | None = None,
    ) -> AnnData:
        """Generate embeddings with DDIM (deterministic given ``seed``).

        Parameters
        ----------
        labels
            One class per sample, or ``{class: number of samples}``; ``None`` with ``n`` for unconditional.
        n
            Number of unconditional samples (when ``labels`` is ``None``).
        guidance_scale
            Classifier-free guidance weight (0 = plain conditional model).
        n_sampling_steps
            DDIM steps.
        seed
            Random seed (default ``sp.settings.seed``).

        Returns
        -------
        New AnnData without genes: ``obsm[embedding_key]`` the samples, ``obs[labels_key or "label"]`` the
        class of each, ``obs["synthetic"] = True``.
        """
        if not self.is_trained_:
            msg = "this EmbeddingDiffusion is not trained; call .train() first."
            raise RuntimeError(msg)
        codes, names = self._codes(labels, n)
        gen = torch.Generator().manual_seed(settings.seed if seed is None else seed)
        self.module.eval()
        z = self.module.score.sample(
            torch.from_numpy(codes),
            n_sampling_steps=n_sampling_steps,
            guidance_scale=guidance_scale,
            generator=gen,
        )
        key = self.setup_.extra.get("labels_key") or "label"
        obs = pd.DataFrame(
            {key: pd.Categorical(names), "synthetic": True},
            index=[f"synthetic{i}" for i in range(len(names))],
        )
        return AnnData(obs=obs, obsm={self.setup_.obsm["embedding"]: z.numpy()})

    def get_augmented(
        self,
        adata: AnnData | None = None,
        *,
        min_cells_per_class: int = 50,
        guidance_scale: float = 0.0,
        seed: int | None = None,
    ) -> AnnData:
        """The cells of ``adata`` (embedding and label only) plus samples topping every class up to a minimum.

        Parameters
        ----------
        adata
            Data with the registered embedding and labels (default: the training AnnData).
        min_cells_per_class
            Classes with fewer cells get synthetic ones up to this number.
        guidance_scale
            Classifier-free guidance weight of the sampler.
        seed
            Random seed.

        Returns
        -------
        New AnnData: ``obsm[embedding_key]``, ``obs[labels_key]``, ``obs["synthetic"]`` (False for real cells).
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            msg = "pass adata= (this model was loaded without its training AnnData)."
            raise ValueError(msg)
        key, emb_key = self.setup_.extra.get("labels_key"), self.setup_.obsm["embedding"]
        if key is None:
            msg = "get_augmented needs a model set up with labels_key."
            raise ValueError(msg)
        counts = adata.obs[key].astype(str).value_counts()
        need = {c: int(min_cells_per_class - counts.get(c, 0)) for c in self.classes_}
        need = {c: k for c, k in need.items() if k > 0}
        real = AnnData(
            obs=pd.DataFrame(
                {key: adata.obs[key].astype(str).to_numpy(), "synthetic": False}, index=adata.obs_names
            ),
            obsm={emb_key: obsm_array(adata, emb_key)},
        )
        if not need:
            return real
        import anndata as ad

        fake = self.sample(need, guidance_scale=guidance_scale, seed=seed)
        fake.obs[key] = fake.obs[key].astype(str)
        out = ad.concat([real, fake], axis=0)
        out.obs[key] = pd.Categorical(out.obs[key])
        return out
