"""DrugResponseTransformer: drug + cell line → ΔExpression, and cell-aware drug retrieval (seed 004)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from .._settings import settings
from .._utils import check_keys, get_array, to_dense
from ..module._drug_response import DrugResponseModule
from ..pp._drugs import drug_features, tanimoto_similarity
from ..train import TrainingPlan
from ._base import X_KEY, BaseModel, PreparedData

__all__ = ["DrugResponseTransformer"]

_DRUG_OBSM = "_drug_features"


class DrugResponsePlan(TrainingPlan):
    """Training plan whose InfoNCE weight rises linearly from 0 to ``rank_weight`` over ``warmup_epochs``."""

    def __init__(self, module, *, rank_weight: float = 1.0, warmup_epochs: int = 10, **kwargs: Any) -> None:
        super().__init__(module, **kwargs)
        self.rank_weight = rank_weight
        self.warmup_epochs = warmup_epochs

    def rank_weight_at(self, epoch: int) -> float:
        """InfoNCE weight at ``epoch`` (linear warm-up)."""
        if self.warmup_epochs <= 0:
            return float(self.rank_weight)
        return float(self.rank_weight * min(1.0, epoch / self.warmup_epochs))

    def current_rank_weight(self) -> float:
        return self.rank_weight_at(self.current_epoch)

    def training_step(self, batch, batch_idx):
        out = self.module.loss(batch, rank_weight=self.current_rank_weight(), **self.loss_kwargs)
        self._log_output(out, "train")
        return out.loss

    def validation_step(self, batch, batch_idx):
        out = self.module.loss(batch, rank_weight=self.current_rank_weight(), **self.loss_kwargs)
        self._log_output(out, "validation")


class DrugResponseTransformer(BaseModel):
    """Transformer over ``[CLS] [DRUG] [CELL] g_1 … g_n`` predicting a drug's ΔExpression in a cell line.

    Δ is measured against the same line's vehicle control. The drug token comes from molecular features
    (Morgan fingerprints from SMILES by default) through an MLP, plus the dose, so drugs never seen in
    training can be predicted (as in chemCPA, Hetzel et al. NeurIPS 2022; models that embed drugs as ids,
    such as STATE, cannot). The gene tokens carry the line's control expression when predicting and an
    observed Δ when encoding a response; InfoNCE aligns encoded responses with drug embeddings, which gives
    cell-aware retrieval (:meth:`rank_drugs`). Every prediction carries an applicability-domain score: the
    Tanimoto similarity of its drug to the nearest training drug.

    Parameters
    ----------
    adata
        AnnData (or MuData) registered with :meth:`setup_anndata` / :meth:`setup_mudata`: treated and control
        samples (cells or pseudobulk) x genes, log-normalized.
    genes
        Train on these genes only (the seed's fast-prototyping variant on a small target set).
    d_model, n_heads, n_layers, n_hidden, dropout_rate
        Transformer width, heads, depth, MLP width and dropout.
    max_gene_tokens
        Above this many genes, genes are grouped into this many tokens (attention is quadratic in tokens).
    n_latent
        Dimension of the retrieval space.
    temperature
        InfoNCE temperature.
    cosine_weight
        Weight of the ``1 - cos`` term on centred Δ beside the MSE.
    fingerprint
        ``drug_features`` kind for SMILES input (``"morgan"``, ``"morgan_count"``).
    n_bits, radius
        Fingerprint length and Morgan radius.

    Examples
    --------
    >>> sp.models.DrugResponseTransformer.setup_anndata(adata, perturbation_key="drug", smiles_key="smiles",
    ...     cell_line_key="cell_line", dose_key="dose", control="DMSO_TF")  # doctest: +SKIP
    >>> model = sp.models.DrugResponseTransformer(adata)  # doctest: +SKIP
    >>> model.train(max_epochs=50)  # doctest: +SKIP
    >>> model.rank_drugs(query_delta, cell_line="A375", k=10)  # doctest: +SKIP
    """

    _unknown_category_keys = frozenset({"drug", "cell_line"})
    _training_plan_cls = DrugResponsePlan

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        perturbation_key: str,
        control: str = "DMSO_TF",
        smiles_key: str | None = None,
        drug_features_key: str | None = None,
        cell_line_key: str | None = None,
        dose_key: str | None = None,
        cell_embedding_key: str | None = None,
        layer: str | None = None,
    ) -> None:
        """Register the drug, its features, the cell line, the dose and the expression layer.

        Parameters
        ----------
        adata
            Samples x genes (log-normalized; treated and control samples).
        perturbation_key
            ``obs`` column with the drug name; rows equal to ``control`` (exact match) are the vehicle.
        control
            Name of the vehicle control (Tahoe-100M ``"DMSO_TF"``, L1000 ``"control"`` / ``"DMSO"``).
        smiles_key
            ``obs`` column with each drug's SMILES (features computed with rdkit); missing on controls is fine.
        drug_features_key
            ``obsm`` key with precomputed drug features per row (instead of ``smiles_key``).
        cell_line_key
            ``obs`` column with the cell line (``None``: one line).
        dose_key
            Numeric ``obs`` column with the dose (µM; values ≤ 0 mean "no dose", e.g. controls).
        cell_embedding_key
            ``obsm`` key with a per-row cell-line embedding used as the cell token instead of a learned one.
        layer
            Expression layer (``None`` = ``X``).
        """
        if (smiles_key is None) == (drug_features_key is None):
            msg = "Pass exactly one of smiles_key= (an obs column of SMILES) or drug_features_key= (an obsm key)."
            raise ValueError(msg)
        check_keys(adata, obs=[perturbation_key])
        if smiles_key is not None and smiles_key not in adata.obs.columns:
            msg = f"adata.obs[{smiles_key!r}] does not exist (obs columns: {list(adata.obs.columns)[:20]})."
            raise KeyError(msg)
        if not (adata.obs[perturbation_key].astype(str) == control).any():
            msg = f"No rows with adata.obs[{perturbation_key!r}] exactly equal to control={control!r}."
            raise ValueError(msg)
        cls._setup(
            adata,
            layer=layer,
            scale="any",
            categorical={"drug": perturbation_key, "cell_line": cell_line_key},
            continuous={"dose": dose_key},
            obsm={"drug_features": drug_features_key, "cell_features": cell_embedding_key},
            extra={"control": control, "smiles_key": smiles_key},
        )

    @classmethod
    def setup_mudata(
        cls, mdata: Any, *, modality: str = "rna", drug_modality: str = "drug", **setup_kwargs: Any
    ) -> None:
        """Register a MuData: expression in ``mdata.mod[modality]``, drug features in ``mdata.mod[drug_modality].X``.

        The drug modality has one row per expression row (matched by ``obs_names``) and its ``X`` holds the
        drug features (e.g. fingerprints); other arguments are those of :meth:`setup_anndata`
        (without ``smiles_key`` / ``drug_features_key``).
        """
        if drug_modality not in mdata.mod:
            msg = f"modality {drug_modality!r} not in mdata.mod (available: {list(mdata.mod)})."
            raise KeyError(msg)
        rna = mdata.mod[modality]
        missing = rna.obs_names.difference(mdata.mod[drug_modality].obs_names)
        if len(missing):
            msg = f"{len(missing)} rows of {modality!r} have no row in {drug_modality!r} (e.g. {list(missing[:3])})."
            raise KeyError(msg)
        view = cls._modality_view(mdata, modality)
        view.obsm[_DRUG_OBSM] = to_dense(mdata.mod[drug_modality][view.obs_names].X)
        cls.setup_anndata(view, drug_features_key=_DRUG_OBSM, **setup_kwargs)
        store = dict(view.uns["_scpredict"])
        rec = json.loads(store[cls.__name__])
        rec["extra"]["drug_modality"] = drug_modality
        store[cls.__name__] = json.dumps(rec)
        rna.uns["_scpredict"] = store

    @classmethod
    def _modality_view(cls, mdata: Any, modality: str) -> AnnData:
        view = BaseModel._modality_view(mdata, modality)
        rec = view.uns.get("_scpredict", {}).get(cls.__name__)
        drug_mod = json.loads(rec)["extra"].get("drug_modality") if rec else None
        if drug_mod is not None:
            view.obsm[_DRUG_OBSM] = to_dense(mdata.mod[drug_mod][view.obs_names].X)
        return view

    # ------------------------------------------------------------------ init
    def __init__(
        self,
        adata: AnnData,
        *,
        genes: Sequence[str] | None = None,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        n_hidden: int = 256,
        dropout_rate: float = 0.1,
        max_gene_tokens: int = 128,
        n_latent: int = 64,
        temperature: float = 0.1,
        cosine_weight: float = 0.5,
        fingerprint: Literal["morgan", "morgan_count"] = "morgan",
        n_bits: int = 2048,
        radius: int = 2,
    ) -> None:
        super().__init__(
            adata,
            d_model=d_model,
            n_heads=n_heads,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            max_gene_tokens=max_gene_tokens,
            n_latent=n_latent,
            temperature=temperature,
            cosine_weight=cosine_weight,
            fingerprint=fingerprint,
            n_bits=n_bits,
            radius=radius,
        )
        adata = self.adata
        if genes is not None:
            missing = [g for g in genes if g not in set(self.var_names_)]
            if missing:
                msg = f"genes= not in adata.var_names: {missing[:10]}"
                raise KeyError(msg)
            self.var_names_ = [str(g) for g in genes]
        rec = self.setup_
        ctrl = self._is_control(adata)
        drug_names = adata.obs[rec.categorical["drug"]].astype(str).to_numpy()
        feats = self._features_for_rows(adata)
        table = np.zeros((len(self.vocab_["drug"]), feats.shape[1]), dtype=np.float32)
        for i, d in enumerate(self.vocab_["drug"]):
            table[i] = feats[np.nonzero(drug_names == d)[0][0]]
        self.extra_arrays_["drug_features"] = table
        x = to_dense(get_array(adata, layer=rec.layer))
        x = x[:, pd.Index(adata.var_names.astype(str)).get_indexer(self.var_names_)]
        lines = self._line_codes(adata)
        n_lines = max(1, len(self.vocab_.get("cell_line", [])))
        cm = np.zeros((n_lines, self.n_vars), dtype=np.float32)
        for li in range(n_lines):
            rows = ctrl & (lines == li)
            if not rows.any():
                name = self.vocab_["cell_line"][li] if "cell_line" in self.vocab_ else "all"
                msg = f"Cell line {name!r} has no control ({rec.extra['control']!r}) rows."
                raise ValueError(msg)
            cm[li] = x[rows].mean(0)
        self.extra_arrays_["control_mean"] = cm
        delta = x[~ctrl] - cm[lines[~ctrl]]
        self.extra_arrays_["delta_std"] = (
            delta.std(0).astype(np.float32) if len(delta) > 1 else np.ones(self.n_vars, np.float32)
        )
        doses = self._doses(adata)[~ctrl]
        doses = np.unique(doses[np.isfinite(doses) & (doses > 0)])
        self.extra_arrays_["doses"] = (
            doses.astype(np.float32) if len(doses) else np.array([np.nan], np.float32)
        )
        if "cell_features" in rec.obsm:
            emb = np.asarray(adata.obsm[rec.obsm["cell_features"]], dtype=np.float32)
            self.extra_arrays_["cell_embedding"] = np.stack(
                [emb[lines == li].mean(0) for li in range(n_lines)]
            )
        self.module = self._build_module()

    def _build_module(self) -> DrugResponseModule:
        p = self.init_params_
        n_cell_features = (
            self.extra_arrays_["cell_embedding"].shape[1] if "cell_embedding" in self.extra_arrays_ else 0
        )
        return DrugResponseModule(
            self.n_vars,
            self.extra_arrays_["drug_features"].shape[1],
            self.extra_arrays_["control_mean"].shape[0],
            control_mean=torch.as_tensor(self.extra_arrays_["control_mean"]),
            n_cell_features=n_cell_features,
            d_model=p["d_model"],
            n_heads=p["n_heads"],
            n_layers=p["n_layers"],
            n_hidden=p["n_hidden"],
            dropout_rate=p["dropout_rate"],
            max_gene_tokens=p["max_gene_tokens"],
            n_latent=p["n_latent"],
            temperature=p["temperature"],
            cosine_weight=p["cosine_weight"],
        )

    # ------------------------------------------------------------------ inputs
    def _is_control(self, adata: AnnData) -> np.ndarray:
        return (
            adata.obs[self.setup_.categorical["drug"]].astype(str).to_numpy() == self.setup_.extra["control"]
        )

    def _line_codes(self, adata: AnnData) -> np.ndarray:
        if "cell_line" not in self.setup_.categorical:
            return np.zeros(adata.n_obs, dtype=np.int64)
        return self._encode_categories(adata, ["cell_line"])["cell_line"]

    def _doses(self, adata: AnnData) -> np.ndarray:
        if "dose" not in self.setup_.continuous:
            return np.full(adata.n_obs, np.nan, dtype=np.float32)
        return adata.obs[self.setup_.continuous["dose"]].to_numpy(dtype=np.float32)

    def _fingerprints(self, smiles: Mapping[str, str]) -> np.ndarray:
        p = self.init_params_
        return drug_features(smiles, kind=p["fingerprint"], n_bits=p["n_bits"], radius=p["radius"]).to_numpy()

    def _features_for_rows(self, adata: AnnData) -> np.ndarray:
        """Drug features of every row: SMILES -> fingerprint per drug, or the registered obsm matrix."""
        rec = self.setup_
        if "drug_features" in rec.obsm:
            check_keys(adata, obsm=[rec.obsm["drug_features"]])
            return np.asarray(adata.obsm[rec.obsm["drug_features"]], dtype=np.float32)
        drugs = adata.obs[rec.categorical["drug"]].astype(str).to_numpy()
        col = rec.extra["smiles_key"]
        check_keys(adata, obs=[rec.categorical["drug"]])
        if col not in adata.obs.columns:
            msg = f"adata.obs[{col!r}] (SMILES) does not exist."
            raise KeyError(msg)
        smiles = adata.obs[col].astype(object).to_numpy()
        ctrl = drugs == rec.extra["control"]
        per_drug: dict[str, str] = {}
        for d, s in zip(drugs, smiles, strict=True):
            if (
                d not in per_drug
                and isinstance(s, str)
                and s.strip()
                and s.lower() not in ("nan", "none", "-666")
            ):
                per_drug[d] = s
        lacking = sorted({d for d, c in zip(drugs, ctrl, strict=True) if not c and d not in per_drug})
        if lacking:
            msg = f"No SMILES in adata.obs[{col!r}] for drugs {lacking[:10]}; drop them or fill the column."
            raise ValueError(msg)
        fps = (
            self._fingerprints(per_drug)
            if per_drug
            else np.zeros((0, self.init_params_["n_bits"]), np.float32)
        )
        index = {d: i for i, d in enumerate(per_drug)}
        out = np.zeros((adata.n_obs, self.init_params_["n_bits"]), dtype=np.float32)
        for i, d in enumerate(drugs):
            if d in index:
                out[i] = fps[index[d]]
        return out

    def _prepare(self, adata: AnnData | None = None, *, keys=None, check_scale: bool = True) -> PreparedData:
        """Base preparation plus per-row drug features, line codes and doses (unseen drugs allowed)."""
        from scvi.data import AnnDataManager
        from scvi.data.fields import LayerField, NumericalObsField, ObsmField

        prepared = super()._prepare(adata, keys=keys, check_scale=check_scale)
        src = prepared.source
        internal = prepared.adata
        internal.obsm["drug_features"] = self._features_for_rows(src)
        if "cell_line" not in internal.obs:
            internal.obs["cell_line"] = self._line_codes(src)
        internal.obs["dose"] = self._doses(src)
        if "drug" not in internal.obs:
            internal.obs["drug"] = self._encode_categories(src, ["drug"])["drug"]
        if "cell_embedding" in self.extra_arrays_ and "cell_features" not in internal.obsm:
            internal.obsm["cell_features"] = self.extra_arrays_["cell_embedding"][
                internal.obs["cell_line"].to_numpy()
            ]
        fields = [LayerField(X_KEY, None, is_count_data=False)]
        fields += [NumericalObsField(k, k) for k in ("drug", "cell_line", "dose")]
        fields += [ObsmField(k, k) for k in internal.obsm]
        manager = AnnDataManager(fields=fields)
        manager.register_fields(internal)
        return PreparedData(adata=internal, manager=manager, source=src)

    # ------------------------------------------------------------------ training
    def train(
        self,
        *,
        max_epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        rank_weight: float = 0.5,
        warmup_epochs: int = 10,
        train_indices: Sequence[int] | None = None,
        validation_indices: Sequence[int] | None = None,
        train_size: float = 0.9,
        early_stopping_monitor: str = "validation_mse",
        plan_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Train on the treated rows (controls only define each line's baseline).

        Parameters
        ----------
        max_epochs, batch_size, lr
            As in :meth:`scpredict.models.BaseModel.train`.
        rank_weight
            Final weight of the InfoNCE response-drug alignment loss.
        warmup_epochs
            Epochs over which that weight rises linearly from 0.
        train_indices, validation_indices
            Row positions (treated rows); default a random ``train_size`` split of the treated rows. Pass
            positions from a split by drug / cell line / pair / plate (``sp.pp.split_*``) to hold those out.
            ``train_indices`` alone trains on exactly those rows with no validation rows (the others may be
            held-out drugs); ``validation_indices`` alone trains on every other treated row.
        train_size
            Fraction of treated rows used for training in the default split.
        early_stopping_monitor
            Validation metric for early stopping (``validation_mse`` is unaffected by the warm-up).
        plan_kwargs
            More training-plan arguments (e.g. ``lr_scheduler="plateau"``).
        **kwargs
            Passed to :meth:`scpredict.models.BaseModel.train`.
        """
        if self.adata is None:
            msg = "This model was loaded without its training AnnData; pass adata= to load()."
            raise ValueError(msg)
        treated = np.nonzero(~self._is_control(self.adata))[0]
        if train_indices is None and validation_indices is None:
            rng = np.random.default_rng(settings.seed)
            perm = rng.permutation(treated)
            n_tr = int(np.ceil(train_size * len(perm)))
            train_indices, validation_indices = np.sort(perm[:n_tr]), np.sort(perm[n_tr:])
        elif train_indices is None:
            # the validation rows were set aside: train on every other treated row
            train_indices = np.setdiff1d(treated, np.asarray(validation_indices, dtype=np.int64))
        elif validation_indices is None:
            # train on exactly these rows; the others may be held-out drugs and must not steer the kept epoch
            validation_indices = np.zeros(0, dtype=np.int64)
        plan = {"rank_weight": rank_weight, "warmup_epochs": warmup_epochs, **dict(plan_kwargs or {})}
        super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            train_indices=train_indices,
            validation_indices=validation_indices,
            early_stopping_monitor=early_stopping_monitor,
            plan_kwargs=plan,
            **kwargs,
        )

    # ------------------------------------------------------------------ forward
    def _applicability(self, feats: np.ndarray) -> np.ndarray:
        """Tanimoto similarity of each feature row to the nearest training drug (controls excluded)."""
        table = self.extra_arrays_["drug_features"]
        keep = np.array([d != self.setup_.extra["control"] for d in self.vocab_["drug"]])
        table = table[keep] if keep.any() else table
        if (feats < 0).any() or (table < 0).any():
            cos = (feats @ table.T) / (
                np.linalg.norm(feats, axis=1, keepdims=True) * np.linalg.norm(table, axis=1)[None] + 1e-12
            )
            return cos.max(1)
        return tanimoto_similarity(feats, table).max(1)

    def _predict_arrays(
        self, feats: np.ndarray, dose: np.ndarray, lines: np.ndarray, *, batch_size: int = 256
    ) -> np.ndarray:
        self.module.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(feats), batch_size):
                sl = slice(s, s + batch_size)
                line = torch.as_tensor(lines[sl], dtype=torch.long)
                cell = (
                    torch.as_tensor(
                        self.extra_arrays_["cell_embedding"][
                            np.minimum(lines[sl], len(self.extra_arrays_["cell_embedding"]) - 1)
                        ]
                    )
                    if "cell_embedding" in self.extra_arrays_
                    else line
                )
                out.append(
                    self.module.predict_delta(
                        torch.as_tensor(feats[sl]),
                        torch.as_tensor(dose[sl], dtype=torch.float32),
                        line=line,
                        cell=cell,
                    ).numpy()
                )
        return np.concatenate(out) if out else np.zeros((0, self.n_vars), np.float32)

    def get_delta(self, adata: AnnData | None = None, *, batch_size: int = 256) -> np.ndarray:
        """Predicted Δ (vs the line's control) for each row's drug, dose and cell line.

        Parameters
        ----------
        adata
            Rows to predict (default: the training data); drugs may be new if their SMILES / features are there.
        batch_size
            Rows per forward pass.

        Returns
        -------
        ndarray (n_obs, n_model_genes), model gene order (``model.var_names_``); control rows get 0.
        """
        adata = self.adata if adata is None else adata
        return self._delta_of(self._prepare(adata, keys=["X"]), batch_size=batch_size)

    def _delta_of(self, prepared: PreparedData, *, batch_size: int) -> np.ndarray:
        obs = prepared.adata
        delta = self._predict_arrays(
            obs.obsm["drug_features"],
            obs.obs["dose"].to_numpy(),
            obs.obs["cell_line"].to_numpy(),
            batch_size=batch_size,
        )
        delta[self._is_control(prepared.source)] = 0.0
        return delta

    def predict(
        self, adata: AnnData | None = None, *, key_added: str = "drug_response", batch_size: int = 256
    ) -> None:
        """Predict each row's expression under its own drug, dose and line (control mean + predicted Δ).

        Parameters
        ----------
        adata
            Rows to predict (default: the training data).
        key_added
            Key used in every slot written.
        batch_size
            Rows per forward pass.

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : ndarray (n_obs, n_vars), predicted expression (NaN for genes the model
          lacks);
        - ``adata.obs[key_added]`` : float, applicability domain — Tanimoto similarity of the row's drug to the
          nearest training drug (1 = a training drug);
        - ``adata.uns[key_added]`` : params, model, version, gene list.
        """
        adata = self.adata if adata is None else adata
        prepared = self._prepare(adata, keys=["X"])
        delta = self._delta_of(prepared, batch_size=batch_size)
        lines = np.minimum(
            prepared.adata.obs["cell_line"].to_numpy(), self.extra_arrays_["control_mean"].shape[0] - 1
        )
        expr = self.extra_arrays_["control_mean"][lines] + delta
        ad_score = self._applicability(prepared.adata.obsm["drug_features"])
        ad_score[self._is_control(prepared.source)] = np.nan  # the vehicle is not a drug to judge
        values = self._to_query_genes(expr.astype(np.float32), adata)
        adata.layers[key_added] = values
        adata.obs[key_added] = ad_score.astype(np.float32)
        self._record(adata, key_added, {"batch_size": batch_size})

    def _candidate_features(
        self, candidates: Sequence[str] | Mapping[str, str] | None
    ) -> tuple[list[str], np.ndarray]:
        vocab = self.vocab_["drug"]
        control = self.setup_.extra["control"]
        if candidates is None:
            names = [d for d in vocab if d != control]
            return names, self.extra_arrays_["drug_features"][[vocab.index(d) for d in names]]
        if isinstance(candidates, Mapping):
            names = list(candidates)
            new = {n: s for n, s in candidates.items() if n not in vocab}
            fps = self._fingerprints(new) if new else None
            rows = []
            for n in names:
                rows.append(
                    fps[list(new).index(n)]
                    if n in new
                    else self.extra_arrays_["drug_features"][vocab.index(n)]
                )
            return names, np.stack(rows).astype(np.float32)
        names = [str(c) for c in candidates]
        unknown = [n for n in names if n not in vocab]
        if unknown:
            msg = f"Candidates not seen in training: {unknown[:10]}; pass candidates as a {{name: SMILES}} mapping."
            raise ValueError(msg)
        return names, self.extra_arrays_["drug_features"][[vocab.index(d) for d in names]]

    def _line_code(self, cell_line: str | None) -> int:
        if "cell_line" not in self.vocab_:
            return 0
        if cell_line is None:
            if len(self.vocab_["cell_line"]) == 1:
                return 0
            msg = f"Pass cell_line= (one of {self.vocab_['cell_line'][:20]})."
            raise ValueError(msg)
        if str(cell_line) not in self.vocab_["cell_line"]:
            msg = f"Unknown cell line {cell_line!r}; known: {self.vocab_['cell_line'][:20]}."
            raise ValueError(msg)
        return self.vocab_["cell_line"].index(str(cell_line))

    def get_perturbation_profiles(
        self,
        perturbations: Sequence[str] | Mapping[str, str],
        *,
        covariates: Mapping[str, str] | None = None,
        doses: Sequence[float] | None = None,
    ) -> AnnData:
        """Predicted profiles of drugs in one cell line, at the given doses.

        Parameters
        ----------
        perturbations
            Drug names seen in training, or a ``{name: SMILES}`` mapping (new drugs allowed).
        covariates
            ``{"cell_line": name}`` (needed when the model knows several lines).
        doses
            Doses to predict at (default: every training dose; ignored without a registered dose).

        Returns
        -------
        AnnData (drugs x doses, model genes): ``X`` = predicted expression, ``layers["delta"]`` = predicted Δ,
        ``obs``: ``perturbation``, ``cell_line``, ``dose``, ``applicability``.
        """
        line = self._line_code((covariates or {}).get("cell_line"))
        names, feats = self._candidate_features(perturbations)
        dose_list = np.asarray(doses if doses is not None else self.extra_arrays_["doses"], dtype=np.float32)
        rep_names = np.repeat(names, len(dose_list))
        rep_feats = np.repeat(feats, len(dose_list), axis=0)
        rep_dose = np.tile(dose_list, len(names))
        delta = self._predict_arrays(rep_feats, rep_dose, np.full(len(rep_names), line))
        ctrl = self.extra_arrays_["control_mean"][line]
        line_name = self.vocab_["cell_line"][line] if "cell_line" in self.vocab_ else "all"
        obs = pd.DataFrame(
            {
                "perturbation": rep_names,
                "cell_line": line_name,
                "dose": rep_dose,
                "applicability": self._applicability(rep_feats),
            }
        )
        obs.index = [f"{n}|{d:g}" for n, d in zip(rep_names, rep_dose, strict=True)]
        return AnnData(
            X=(ctrl + delta).astype(np.float32),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(self.var_names_)),
            layers={"delta": delta.astype(np.float32)},
        )

    # ------------------------------------------------------------------ retrieval
    def _query_matrix(self, query) -> tuple[np.ndarray, list[str]]:
        """Query -> (n_queries, n_model_genes) Δ matrix aligned by gene name, and query names."""
        genes = pd.Index(self.var_names_)
        if isinstance(query, Mapping) and set(query) <= {"up", "down"}:
            v = np.zeros(self.n_vars, dtype=np.float32)
            std = self.extra_arrays_["delta_std"]
            for sign, key in ((1.0, "up"), (-1.0, "down")):
                idx = genes.get_indexer([str(g) for g in query.get(key, [])])
                idx = idx[idx >= 0]
                v[idx] = sign * 2.0 * std[idx]
            if not v.any():
                msg = "None of the query's up/down genes are model genes."
                raise ValueError(msg)
            return v[None], ["query"]
        if isinstance(query, AnnData):
            x = to_dense(query.X)
            cols, names = query.var_names.astype(str), list(query.obs_names.astype(str))
        elif isinstance(query, pd.DataFrame):
            x, cols, names = (
                query.to_numpy(np.float32),
                query.columns.astype(str),
                list(query.index.astype(str)),
            )
        elif isinstance(query, pd.Series):
            x, cols, names = (
                query.to_numpy(np.float32)[None],
                query.index.astype(str),
                [str(query.name or "query")],
            )
        else:
            x = np.atleast_2d(np.asarray(query, dtype=np.float32))
            if x.shape[1] != self.n_vars:
                msg = f"A plain array query must have the model's {self.n_vars} genes; pass a Series/AnnData named by gene."
                raise ValueError(msg)
            return x, [f"query{i}" for i in range(len(x))] if len(x) > 1 else ["query"]
        idx = pd.Index(cols).get_indexer(genes)
        if (idx < 0).all():
            msg = "The query shares no gene with the model."
            raise ValueError(msg)
        out = np.zeros((len(x), self.n_vars), dtype=np.float32)
        out[:, idx >= 0] = x[:, idx[idx >= 0]]
        return out, names

    def get_drug_scores(
        self,
        query,
        *,
        cell_line: str | None = None,
        candidates: Sequence[str] | Mapping[str, str] | None = None,
        method: Literal["embedding", "profile", "combined"] = "combined",
    ) -> pd.DataFrame:
        """Scores of candidate drugs for reproducing each query Δ in a cell line (higher = better).

        ``"embedding"``: cosine between the encoded query response and the drug embedding (InfoNCE space);
        ``"profile"``: best Pearson correlation over training doses between the drug's predicted Δ and the
        query; ``"combined"``: their mean.

        Parameters
        ----------
        query
            Δ vector(s): a Series or DataFrame / AnnData named by gene, an array over the model genes, or
            ``{"up": [...], "down": [...]}`` gene lists.
        cell_line
            The line the query was measured in.
        candidates
            Drug names (seen in training) or a ``{name: SMILES}`` mapping; default all training drugs.
        method
            How to score, see above.

        Returns
        -------
        DataFrame (queries x candidate drugs).
        """
        if method not in ("embedding", "profile", "combined"):
            msg = f"method must be 'embedding', 'profile' or 'combined', got {method!r}."
            raise ValueError(msg)
        q, names = self._query_matrix(query)
        line = self._line_code(cell_line)
        cands, feats = self._candidate_features(candidates)
        self.module.eval()
        scores = np.zeros((len(q), len(cands)))
        with torch.no_grad():
            if method in ("embedding", "combined"):
                cell = (
                    torch.as_tensor(self.extra_arrays_["cell_embedding"][[line] * len(q)])
                    if "cell_embedding" in self.extra_arrays_
                    else torch.full((len(q),), line, dtype=torch.long)
                )
                zr = self.module.encode_response(torch.as_tensor(q), cell).numpy()
                zd = self.module.embed_drug(torch.as_tensor(feats)).numpy()
                scores += zr @ zd.T
            if method in ("profile", "combined"):
                cov = {"cell_line": self.vocab_["cell_line"][line]} if "cell_line" in self.vocab_ else None
                prof = self.get_perturbation_profiles(
                    cands if candidates is None else candidates, covariates=cov
                )
                d = prof.layers["delta"].reshape(len(cands), -1, self.n_vars)
                dc = d - d.mean(-1, keepdims=True)
                qc = q - q.mean(-1, keepdims=True)
                num = np.einsum("qg,cdg->qcd", qc, dc)
                den = np.linalg.norm(qc, axis=-1)[:, None, None] * np.linalg.norm(dc, axis=-1)[None] + 1e-12
                scores += (num / den).max(-1)
        if method == "combined":
            scores /= 2.0
        return pd.DataFrame(scores, index=pd.Index(names, name="query"), columns=pd.Index(cands, name="drug"))

    def rank_drugs(
        self,
        query,
        *,
        cell_line: str | None = None,
        candidates: Sequence[str] | Mapping[str, str] | None = None,
        k: int = 20,
        method: Literal["embedding", "profile", "combined"] = "combined",
    ) -> pd.DataFrame:
        """The ``k`` drugs that best reproduce one query ΔExpression in ``cell_line``.

        Parameters
        ----------
        query
            One Δ: a Series named by gene, a one-row AnnData / DataFrame, an array over the model genes, or
            ``{"up": [...], "down": [...]}``.
        cell_line
            Line of the query (the same Δ can point to different drugs in different lines).
        candidates
            Drug names seen in training, or a ``{name: SMILES}`` mapping (new drugs allowed); default all
            training drugs.
        k
            Number of drugs returned.
        method
            ``"embedding"``, ``"profile"`` or ``"combined"`` (see :meth:`get_drug_scores`).

        Returns
        -------
        DataFrame with ``rank`` (1 = best), ``drug``, ``score``, ``applicability`` (Tanimoto similarity to the
        nearest training drug) and ``seen`` (drug in the training data), best first.
        """
        scores = self.get_drug_scores(query, cell_line=cell_line, candidates=candidates, method=method)
        if len(scores) != 1:
            msg = f"rank_drugs takes one query, got {len(scores)}; use get_drug_scores for several."
            raise ValueError(msg)
        names, feats = self._candidate_features(candidates)
        s = scores.iloc[0].to_numpy()
        order = np.argsort(-s, kind="stable")[:k]
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(order) + 1),
                "drug": [names[i] for i in order],
                "score": s[order],
                "applicability": self._applicability(feats[order]),
                "seen": [names[i] in self.vocab_["drug"] for i in order],
            }
        )
