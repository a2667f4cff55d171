"""BiMambaPredictor: the whole transcriptome as one sequence, read by a bidirectional Mamba (seed 001)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._settings import settings
from .._utils import get_array
from ..data._alignment import align_genes, align_matrix
from ..module._bimamba import BiMambaModule
from ..pp._check import InputScaleError, check_input
from ._perturbation_base import PERTURBATION_REGISTRY_KEY, PerturbationModel, covariate_registry_key

__all__ = ["BiMambaPredictor"]

_LOG1P_TARGET_SUM = 1e4


def _find_counts(adata: AnnData, counts_layer: str | None, layer: str | None) -> str | None:
    """Where the integer counts are: the given layer, else ``layers['counts']``, else ``raw``, else X."""
    if counts_layer is not None:
        get_array(adata, layer=None if counts_layer == "X" else counts_layer)  # KeyError naming the layer
        return counts_layer
    if "counts" in adata.layers:
        return "counts"
    if adata.raw is not None:
        return "raw"
    try:
        check_input(adata, layer=layer, scale="counts")
    except InputScaleError:
        return None
    return "X" if layer is None else layer


class _ConditionBatches:
    """Batches of at most ``batch_size`` cells drawn from at most ``conditions_per_batch`` conditions.

    Each condition's cells are cut into pieces of ``batch_size // conditions_per_batch`` cells; the pieces are
    shuffled and grouped, so every cell is used once per epoch and the backbone runs once per piece.
    """

    def __init__(
        self,
        keys: np.ndarray,
        indices: np.ndarray,
        *,
        batch_size: int,
        conditions_per_batch: int,
        shuffle: bool,
    ) -> None:
        self.indices, self.shuffle = np.asarray(indices), shuffle
        _, self.codes = np.unique(keys[self.indices], axis=0, return_inverse=True)
        self.codes = self.codes.reshape(-1)
        self.k = max(1, int(conditions_per_batch))
        self.piece = max(1, int(batch_size) // self.k)
        self.rng = np.random.default_rng(settings.seed)
        self._n = len(list(self._pieces(np.random.default_rng(0))))

    def _pieces(self, rng) -> Iterator[np.ndarray]:
        for c in range(int(self.codes.max()) + 1 if len(self.codes) else 0):
            members = self.indices[self.codes == c]
            if self.shuffle:
                members = rng.permutation(members)
            for i in range(0, len(members), self.piece):
                yield members[i : i + self.piece]

    def __len__(self) -> int:
        return -(-self._n // self.k)

    def __iter__(self) -> Iterator[np.ndarray]:
        pieces = list(self._pieces(self.rng))
        order = self.rng.permutation(len(pieces)) if self.shuffle else np.arange(len(pieces))
        for i in range(0, len(order), self.k):
            yield np.sort(np.concatenate([pieces[j] for j in order[i : i + self.k]]))


class _TensorDict(torch.utils.data.Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, idx):
        return {k: v[idx] for k, v in self.tensors.items()}


class BiMambaPredictor(PerturbationModel):
    """Predict the transcriptome under a perturbation with a bidirectional Mamba over all genes (seed 001).

    The ``G`` genes, in genomic order, form one sequence after a ``[COND]`` token. A gene token is its learnable
    identity embedding ⊕ its genomic position (chromosome embedding + Fourier features of the locus through an
    MLP; ``var['chromosome']`` / ``var['locus']`` from :func:`scpredict.pp.annotate_gene_positions`) ⊕ its pathway
    features (``varm[pathway_key]`` from :func:`scpredict.pp.pathway_features`, learnt on control cells). The
    condition enters as the ``[COND]`` token and as a modulation of every gene token; it is a learned embedding
    per seen perturbation plus a compositional part built from its targets, so unseen combinations and unseen
    targets that are genes of the model can be predicted (an unseen combination, by default, as the sum of the
    changes the backbone predicts for each of its targets; see ``unseen_combination``). BiMamba blocks (forward and reverse selective scans,
    linear in ``G``; fused ``mamba_ssm`` kernels on CUDA) mix the sequence, and a per-gene head reads it out.
    A batch runs the backbone once per unique condition and scores all of that condition's cells against it.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    head
        ``"linear"``: one value per gene, MSE on the registered log-normalized layer (warns on raw counts).
        ``"probabilistic"``: ``mean_log`` and ``disp_log`` per gene, negative-binomial NLL on integer counts
        (``layers['counts']`` or ``raw.X``, found automatically) with the library size of each cell; refuses
        non-count data.
    d_model, n_layers
        Width and depth of the backbone.
    gene_identity_dim, position_dim, n_frequencies, cond_dim
        Sizes of the gene identity embedding, the position encoding, the Fourier ladder and the condition vector.
    pathway_key
        ``varm`` key of pathway features (used when present).
    ssm
        ``"mamba2"`` (chunked SSD scan, fastest on CPU) or ``"mamba1"`` (selective scan).
    shared_weights
        Share the mixer between the forward and reverse scans.
    d_state
        State size of the scans.
    dropout_rate
        Dropout in the backbone.
    condition_dropout
        Probability of hiding the learned perturbation embedding in training (trains the compositional part).
    composition
        ``"additive"`` (default): a combination's condition vector is the sum of its targets' vectors (each
        target: learned target embedding + MLP of its gene identity and pathway features), plus a learned
        interaction embedding for combinations seen in training, so an unseen combination starts at the sum of
        its singles (the compositional prior of GEARS, Roohani et al. 2024). ``"pooled"``: an MLP of the summed
        targets plus a learned embedding per seen label.
    unseen_combination
        How a combination not seen in training is predicted. ``"additive"`` (default): the backbone predicts
        the control and each target as a one-target condition, and the combination's change from control is the
        sum of its targets' predicted changes (on the log scale of the head), the additive structural prior of
        combinatorial-perturbation models (GEARS, Roohani et al., Nat. Biotechnol. 2024; Norman et al., Science
        2019); combinations seen in training keep their own learned interaction. ``"joint"``: the backbone reads
        the combination's composed condition vector once (its non-additive extrapolation; on Norman 2019 it
        varied with the seed far more than the additive rule).

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=200, n_genes=30)
    >>> sp.models.BiMambaPredictor.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.BiMambaPredictor(adata, d_model=16, n_layers=1)
    >>> model.train(max_epochs=1)
    >>> model.predict(adata, key_added="bimamba")
    >>> adata.layers["bimamba"].shape
    (200, 30)
    """

    _setup_scale: ClassVar[str] = "any"
    _backbone: ClassVar[str] = "bimamba"

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        perturbation_key: str,
        control: str = "control",
        layer: str | None = None,
        counts_layer: str | None = None,
        covariate_keys: Sequence[str] | None = None,
        sep: str = "+",
    ) -> None:
        """Register perturbation labels, covariates, the log-normalized layer and where the counts are.

        Parameters
        ----------
        adata
            Cells with one perturbation label each.
        perturbation_key
            ``obs`` column of labels (``"control"``, ``"A"``, ``"A+B"``).
        control
            Label of control cells.
        layer
            Log-normalized expression for the linear head (``None`` = ``X``).
        counts_layer
            Integer counts for the probabilistic head: a layer name, ``"raw"`` or ``"X"``; default: found
            automatically (``layers['counts']``, then ``raw.X``, then the registered layer if it holds counts).
        covariate_keys
            ``obs`` columns the response depends on (cell line, cell type).
        sep
            Separator of combination targets.

        Returns
        -------
        ``None``; writes ``adata.uns['_scpredict'][ClassName]`` (the JSON setup record).
        """
        counts = _find_counts(adata, counts_layer, layer)
        cls._setup_perturbation(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            covariate_keys=covariate_keys,
            layer=layer,
            sep=sep,
            scale="any",
            extra={"counts_layer": counts},
        )

    def __init__(
        self,
        adata: AnnData,
        *,
        head: Literal["linear", "probabilistic"] = "linear",
        d_model: int = 64,
        n_layers: int = 2,
        gene_identity_dim: int = 32,
        position_dim: int = 16,
        n_frequencies: int = 16,
        cond_dim: int = 64,
        pathway_key: str = "X_pathway",
        ssm: Literal["mamba1", "mamba2"] = "mamba2",
        shared_weights: bool = True,
        d_state: int = 16,
        dropout_rate: float = 0.0,
        condition_dropout: float = 0.3,
        composition: Literal["additive", "pooled"] = "additive",
        unseen_combination: Literal["additive", "joint"] = "additive",
        **backbone_kwargs: Any,
    ) -> None:
        if unseen_combination not in ("additive", "joint"):
            msg = f"unseen_combination must be 'additive' or 'joint', got {unseen_combination!r}."
            raise ValueError(msg)
        if head not in ("linear", "probabilistic"):
            msg = f"head must be 'linear' or 'probabilistic', got {head!r}."
            raise ValueError(msg)
        super().__init__(
            adata,
            head=head,
            d_model=d_model,
            n_layers=n_layers,
            gene_identity_dim=gene_identity_dim,
            position_dim=position_dim,
            n_frequencies=n_frequencies,
            cond_dim=cond_dim,
            pathway_key=pathway_key,
            ssm=ssm,
            shared_weights=shared_weights,
            d_state=d_state,
            dropout_rate=dropout_rate,
            condition_dropout=condition_dropout,
            composition=composition,
            unseen_combination=unseen_combination,
            **backbone_kwargs,
        )
        target = self._training_target(adata)  # checks the head's input scale
        self._gene_arrays(adata)
        self.target_vocab_ = sorted({t for p in self.perturbations_ for t in self.targets(p)})
        if head == "linear":
            self.extra_arrays_["gene_mean"] = target.mean(0).astype(np.float32)
            self.nonnegative_ = bool(target.size == 0 or target.min() >= 0)
        else:
            lib = target.sum(1)
            self.library_reference_ = float(np.median(lib[lib > 0])) if (lib > 0).any() else 1.0
            scaled = target / np.maximum(lib, 1.0)[:, None] * self.library_reference_
            self.extra_arrays_["gene_mean"] = np.log(scaled.mean(0) + 1e-4).astype(np.float32)
        self.module = self._build_module()

    # ------------------------------------------------------------------ data
    @property
    def head(self) -> str:
        """``"linear"`` or ``"probabilistic"``."""
        return self.init_params_["head"]

    def _counts(self, adata: AnnData) -> np.ndarray:
        source = self.setup_.extra.get("counts_layer")
        if source is None:
            msg = (
                f"{type(self).__name__}(head='probabilistic') needs raw integer counts, but none were found: "
                "adata has no layers['counts'], no adata.raw and its registered layer is not counts. Pass "
                "counts_layer=<layer of raw counts> to setup_anndata, or use head='linear' on log-normalized X."
            )
            raise ValueError(msg)
        layer = None if source == "X" else source
        check_input(adata, layer=layer, scale="counts", name=f"{type(self).__name__}(head='probabilistic')")
        x = get_array(adata, layer=layer)
        x = align_matrix(
            x, align_genes(adata.var_names, self.var_names_, max_missing=self._max_missing_genes)
        )
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)

    def _training_target(self, adata: AnnData) -> np.ndarray:
        """Counts (probabilistic head) or the registered layer (linear head), in model gene order."""
        if self.head == "probabilistic":
            return self._counts(adata)
        try:
            check_input(adata, layer=self.setup_.layer, scale="log1p")
        except InputScaleError as e:
            warnings.warn(
                f"{type(self).__name__}(head='linear') is trained with MSE on log-normalized values, but {e} "
                "Use head='probabilistic' for counts.",
                UserWarning,
                stacklevel=3,
            )
        return self._expression(adata).astype(np.float32)

    def _gene_arrays(self, adata: AnnData) -> None:
        """Chromosome codes, loci, pathway features and genomic order of the model's genes (persisted)."""
        var = adata.var.reindex(self.var_names_)
        if "chromosome" in var.columns:
            chrom = var["chromosome"].astype(str).fillna("unknown").replace("nan", "unknown")
        else:
            chrom = pd.Series("unknown", index=var.index)
        names = sorted(set(chrom) - {"unknown"}, key=lambda c: (len(c), c)) + ["unknown"]
        if "chromosome" in var.columns and isinstance(adata.var["chromosome"].dtype, pd.CategoricalDtype):
            names = [str(c) for c in adata.var["chromosome"].cat.categories if c != "unknown"] + ["unknown"]
        codes = pd.Index(names).get_indexer(chrom).astype(np.int64)
        locus = var["locus"].to_numpy(dtype=np.float32) if "locus" in var.columns else np.zeros(self.n_vars)
        start = var["start"].to_numpy(dtype=float) if "start" in var.columns else np.zeros(self.n_vars)
        key = self.init_params_["pathway_key"]
        if key in adata.varm:
            pw = np.asarray(adata.varm[key], dtype=np.float32)[adata.var_names.get_indexer(self.var_names_)]
        else:
            pw = np.zeros((self.n_vars, 0), dtype=np.float32)
        order = np.lexsort((np.arange(self.n_vars), np.nan_to_num(start, nan=np.inf), codes))
        self.chromosomes_ = names
        self.extra_arrays_.update(
            chrom=codes,
            locus=np.nan_to_num(locus).astype(np.float32),
            pathway=pw,
            order=order.astype(np.int64),
        )

    def _gene_index(self, target: str) -> int:
        idx = pd.Index(self.var_names_).get_indexer([target])[0]
        if idx < 0:
            upper = pd.Index([g.upper() for g in self.var_names_])
            hits = np.flatnonzero(upper == target.upper())
            idx = int(hits[0]) if len(hits) else -1
        return int(idx)

    def _encode_targets(self, labels: Sequence[str]) -> torch.Tensor:
        """``(n, T)`` target ids: learned id, ``-2 - gene`` for unseen gene targets, ``-1`` padding."""
        tv = {t: i for i, t in enumerate(self.target_vocab_)}
        rows = []
        for label in labels:
            ids = []
            for t in self.targets(label):
                if t in tv:
                    ids.append(tv[t])
                else:
                    g = self._gene_index(t)
                    if g < 0:
                        msg = (
                            f"target {t!r} of {label!r} is neither a training target nor a gene of the model."
                        )
                        raise ValueError(msg)
                    ids.append(-2 - g)
            rows.append(ids)
        width = max([1, *map(len, rows)])
        return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)

    def _extra_metadata(self) -> dict[str, Any]:
        return {
            "target_vocab": self.target_vocab_,
            "chromosomes": self.chromosomes_,
            "library_reference": getattr(self, "library_reference_", 1.0),
            "nonnegative": getattr(self, "nonnegative_", True),
        }

    def _set_extra_metadata(self, meta) -> None:
        self.target_vocab_ = list(meta["target_vocab"])
        self.chromosomes_ = list(meta["chromosomes"])
        self.library_reference_ = float(meta["library_reference"])
        self.nonnegative_ = bool(meta.get("nonnegative", True))

    def _build_module(self) -> BiMambaModule:
        p = dict(self.init_params_)
        a = self.extra_arrays_
        pert_targets = self._encode_targets(self.perturbations_)
        target_gene = torch.tensor([self._gene_index(t) for t in self.target_vocab_], dtype=torch.long)
        module_kwargs = {
            k: p[k]
            for k in (
                "head",
                "d_model",
                "n_layers",
                "gene_identity_dim",
                "position_dim",
                "n_frequencies",
                "cond_dim",
                "ssm",
                "shared_weights",
                "d_state",
                "dropout_rate",
                "condition_dropout",
                "composition",
                "n_heads",
            )
            if k in p
        }
        return BiMambaModule(
            self.n_vars,
            len(self.perturbations_),
            chrom=torch.as_tensor(a["chrom"]),
            locus=torch.as_tensor(a["locus"]),
            pathway=torch.as_tensor(a["pathway"]),
            order=torch.as_tensor(a["order"]),
            pert_targets=pert_targets,
            n_targets=len(self.target_vocab_),
            target_gene=target_gene,
            covariate_sizes=[len(self.covariate_values(c)) for c in self.covariate_keys],
            gene_mean=torch.as_tensor(a["gene_mean"]),
            backbone=self._backbone,
            library_reference=getattr(self, "library_reference_", 1.0),
            **module_kwargs,
        )

    # ------------------------------------------------------------------ training
    def _make_datamodule(self, prepared, train_indices, validation_indices, *, batch_size: int):
        from ..train import IndexDataModule

        source = prepared.source
        target = self._training_target(source) if self.head == "probabilistic" else None
        if target is None:
            x = prepared.adata.X
            target = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
        keys = [PERTURBATION_REGISTRY_KEY] + [covariate_registry_key(c) for c in self.covariate_keys]
        codes = np.stack([prepared.adata.obs[k].to_numpy(dtype=np.int64) for k in keys], axis=1)
        tensors = {"X": torch.as_tensor(target)}
        tensors.update({k: torch.as_tensor(codes[:, [i]], dtype=torch.float32) for i, k in enumerate(keys)})
        data = _TensorDict(tensors)
        cpb = getattr(self, "_conditions_per_batch", 4)

        def make(indices, shuffle):
            sampler = _ConditionBatches(
                codes, indices, batch_size=batch_size, conditions_per_batch=cpb, shuffle=shuffle
            )
            return torch.utils.data.DataLoader(data, sampler=sampler, batch_size=None)

        return IndexDataModule(make, train_indices, validation_indices)

    def train(
        self,
        *,
        max_epochs: int = 50,
        batch_size: int = 256,
        conditions_per_batch: int = 4,
        lr: float = 3e-3,
        per_cell: bool = False,
        early_stopping_monitor: str = "validation_loss",
        ema_decay: float | None = None,
        plan_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        """Train with Lightning (progress bar with loss and R², early stopping, ``model.history``).

        Parameters
        ----------
        max_epochs, batch_size, lr
            As in :meth:`BaseModel.train`; a batch holds at most ``batch_size`` cells.
        conditions_per_batch
            Conditions per batch: the backbone runs once per condition, not once per cell.
        per_cell
            Run the backbone once per cell (slow; for timing comparisons only).
        early_stopping_monitor
            Metric for early stopping and best-weights restore (e.g. ``"validation_r2"``).
        ema_decay
            Keep an exponential moving average of the weights (decay per step, e.g. ``0.98``); validation, early
            stopping and the restored best weights use the average. ``None``: no averaging.
        plan_kwargs
            Extra training-plan arguments.
        **kwargs
            Passed to :meth:`BaseModel.train` (``train_indices``, ``validation_indices``, ``accelerator``, ...).
        """
        self._conditions_per_batch = conditions_per_batch
        plan = dict(plan_kwargs or {})
        plan["loss_kwargs"] = {**plan.get("loss_kwargs", {}), "per_cell": per_cell}
        if ema_decay is not None:
            from scpredict.train import WeightEMA

            kwargs["callbacks"] = [*kwargs.get("callbacks", []), WeightEMA(ema_decay)]
        super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            early_stopping_monitor=early_stopping_monitor,
            plan_kwargs=plan,
            **kwargs,
        )

    # ------------------------------------------------------------------ prediction
    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        known, tv = set(self.perturbations_), set(self.target_vocab_)
        return sorted(
            {
                p
                for p in perturbations
                if p not in known and any(t not in tv and self._gene_index(t) < 0 for t in self.targets(p))
            }
        )

    def _unsupported_hint(self) -> str:
        return (
            f"{type(self).__name__} predicts seen perturbations, unseen combinations of seen targets and targets "
            "that are genes of the model (its var_names); a target outside the gene vocabulary needs training "
            "cells of it (or add the gene to the model)."
        )

    def _module_profiles(self, conditions: pd.DataFrame) -> dict[str, np.ndarray]:
        """Raw module outputs per condition row; unseen combinations composed as the rule says."""
        labels = conditions[PERTURBATION_REGISTRY_KEY].astype(str).tolist()
        seen = set(self.perturbations_)
        composed = [
            i
            for i, p in enumerate(labels)
            if p not in seen and len(self.targets(p)) >= 2 and self.unseen_combination == "additive"
        ]
        if not composed:
            return self._joint_profiles(conditions)
        # Δ(A+B) = Δ(A) + Δ(B): each target's profile as a one-target condition (same covariates), minus control
        parts = [conditions.reset_index(drop=True)]
        for i in composed:
            row = conditions.iloc[[i]]
            for label in [self.control, *self.targets(labels[i])]:
                parts.append(row.assign(**{PERTURBATION_REGISTRY_KEY: label}))
        table = pd.concat(parts, ignore_index=True)
        keys = pd.MultiIndex.from_frame(table.astype(str))
        uniq = table.loc[~keys.duplicated()].reset_index(drop=True)
        rows = pd.MultiIndex.from_frame(uniq.astype(str)).get_indexer(keys)
        out = {k: v[rows] for k, v in self._joint_profiles(uniq).items()}
        start = len(conditions)
        for i in composed:
            k = len(self.targets(labels[i]))
            for v in out.values():
                ctrl, singles = v[start], v[start + 1 : start + 1 + k]
                v[i] = ctrl + (singles - ctrl).sum(0)
            start += 1 + k
        return {name: v[: len(conditions)] for name, v in out.items()}

    @property
    def unseen_combination(self) -> str:
        """How unseen combinations are predicted: ``"additive"`` or ``"joint"``."""
        return self.init_params_.get("unseen_combination", "joint")

    @torch.no_grad()
    def _joint_profiles(self, conditions: pd.DataFrame) -> dict[str, np.ndarray]:
        labels = conditions[PERTURBATION_REGISTRY_KEY].astype(str).tolist()
        pert = torch.tensor(pd.Index(self.perturbations_).get_indexer(labels), dtype=torch.long)
        targets = self._encode_targets(labels)
        covs = None
        if self.covariate_keys:
            covs = torch.tensor(
                np.stack(
                    [
                        pd.Index(self.covariate_values(c)).get_indexer(conditions[c].astype(str))
                        for c in self.covariate_keys
                    ],
                    axis=1,
                ),
                dtype=torch.long,
            )
        self.module.eval()
        device = self.device
        outs: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(labels), 16):
            sl = slice(i, i + 16)
            out = self.module(
                pert[sl].to(device), targets[sl].to(device), None if covs is None else covs[sl].to(device)
            )
            for k, v in out.items():
                outs.setdefault(k, []).append(v.cpu().numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        out = self._module_profiles(conditions)
        if self.head == "linear":
            # the linear head is unbounded; log-normalized expression is not (clipped like the baselines)
            return np.clip(out["mean"], 0.0, None) if getattr(self, "nonnegative_", True) else out["mean"]
        return np.log1p(np.exp(out["mean"]) * _LOG1P_TARGET_SUM / self.library_reference_)

    def get_perturbation_profiles(self, perturbations: Sequence[str], *, covariates=None) -> AnnData:
        """Predicted profiles of the requested conditions (never mutates).

        Parameters
        ----------
        perturbations
            Labels (``"control"``, ``"A"``, ``"A+B"``; unseen combinations and gene targets allowed).
        covariates
            Covariate values, as in :meth:`PerturbationModel.get_perturbation_profiles`.

        Returns
        -------
        AnnData with ``X`` the predicted log1p-normalized profiles (one row per condition; the linear head's
        output is clipped at 0 when its training data were non-negative); for the
        probabilistic head also ``layers['nb_mean']`` (expected counts at the reference library size
        ``uns['library_reference']``) and ``layers['dispersion']`` (NB inverse dispersion θ).
        """
        out = super().get_perturbation_profiles(perturbations, covariates=covariates)
        if self.head == "probabilistic":
            table = self._conditions_table(perturbations, covariates)
            raw = self._module_profiles(table)
            out.layers["nb_mean"] = np.exp(raw["mean"]).astype(np.float32)
            out.layers["dispersion"] = np.exp(raw["disp_log"]).astype(np.float32)
            out.uns["library_reference"] = self.library_reference_
        return out

    def predict(self, adata: AnnData | None = None, *, key_added: str | None = None) -> None:
        """Predict each cell's expression under its own condition.

        Parameters
        ----------
        adata
            Cells to predict (default: the training data); ``obs`` gives the conditions.
        key_added
            Key of the written slots (default ``"bi_mamba_predictor"`` / ``"transformer_predictor"``).

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : float32 (n_obs, n_vars); linear head: predicted log-normalized
          expression (clipped at 0 when the training data were non-negative); probabilistic head: the NB mean count at each cell's library size (its total counts when
          ``adata`` has counts, else the reference library size)
        - ``adata.uns[key_added]`` : params (perturbation key, control, covariates, scale), model, version, genes
        """
        if self.head == "linear":
            super().predict(adata, key_added=key_added)
            return
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("pass `adata=`: this model was loaded without an AnnData.")
        key_added = key_added or (
            "transformer_predictor" if self._backbone == "transformer" else "bi_mamba_predictor"
        )
        table = self._cell_conditions(adata).reset_index(drop=True)
        self._check_perturbations(sorted(set(table[PERTURBATION_REGISTRY_KEY])))
        self._check_covariates(table)
        uniq = table.drop_duplicates().reset_index(drop=True)
        rows = pd.MultiIndex.from_frame(uniq).get_indexer(pd.MultiIndex.from_frame(table))
        mean = np.exp(self._module_profiles(uniq)["mean"])[rows]
        try:
            lib = self._counts(adata).sum(1) / self.library_reference_
        except (ValueError, KeyError):
            lib = np.ones(len(table))
        values = self._to_query_genes((mean * lib[:, None]).astype(np.float32), adata)
        adata.layers[key_added] = values
        self._record(
            adata,
            key_added,
            {
                "perturbation_key": self.perturbation_key,
                "control": self.control,
                "covariate_keys": self.covariate_keys,
                "scale": "counts",
            },
        )
