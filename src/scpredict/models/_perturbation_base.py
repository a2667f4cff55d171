"""The perturbation-model contract shared by every model that predicts the response to a perturbation.

Baselines (:class:`~scpredict.models.ControlBaseline`, ...), the BiMamba predictor, the diffusion model and the
drug-response model all subclass :class:`PerturbationModel`, so that one harness
(:func:`scpredict.tl.evaluate_perturbations`, :func:`scpredict.tl.benchmark_perturbation_models`) can judge them
side by side.
"""

from __future__ import annotations

import re
from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from anndata import AnnData

from .._utils import check_keys, get_array
from ..data._alignment import align_genes, align_matrix
from ..pp._check import Scale, check_input
from ..pp._perturbation import parse_targets
from ._base import BaseModel

__all__ = ["PerturbationModel", "UnknownPerturbationError", "covariate_registry_key"]

#: registry key of the perturbation column
PERTURBATION_REGISTRY_KEY = "perturbation"


class UnknownPerturbationError(ValueError):
    """A requested perturbation (or covariate value) cannot be predicted by this model."""


def covariate_registry_key(column: str) -> str:
    """Registry key under which a covariate ``obs`` column is registered (``"cov_<column>"``)."""
    return f"cov_{column}"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class PerturbationModel(BaseModel, metaclass=ABCMeta):
    """Base class of perturbation-response models: one profile per condition, cells get their condition's profile.

    A *condition* is a perturbation label (``"KLF1"``, ``"KLF1+MAP2K6"``, ``"control"``) plus, optionally, one
    value per covariate column (cell line, cell type). Subclasses implement one abstract hook,
    :meth:`_predict_profiles` (a class without it cannot be instantiated), and may override :meth:`_unsupported` (which perturbations they can predict,
    e.g. unseen combinations of seen singles) and :meth:`_predict_cells` (per-cell outputs, e.g. samples).

    Predictions are on the scale of the registered layer, which is declared log-normalized (``"log1p"``)
    unless a subclass declares otherwise in ``_setup_scale`` and converts its outputs to log1p values.

    Parameters
    ----------
    adata
        AnnData registered with ``Model.setup_anndata(adata, perturbation_key=..., ...)``.
    **init_params
        Hyper-parameters of the subclass.
    """

    #: scale that ``setup_anndata`` declares for the registered layer
    _setup_scale: ClassVar[Scale] = "log1p"

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        *,
        perturbation_key: str,
        control: str = "control",
        covariate_keys: Sequence[str] | None = None,
        layer: str | None = None,
        sep: str = "+",
    ) -> None:
        """Register the perturbation labels, covariates and expression layer of ``adata``.

        Parameters
        ----------
        adata
            Cells with one perturbation label each; nothing is written when a check fails.
        perturbation_key
            ``obs`` column of perturbation labels (``"control"``, ``"A"``, ``"A+B"``).
        control
            Label of control cells; must occur in the column.
        covariate_keys
            ``obs`` columns the response depends on (cell line, cell type); controls are matched within them.
        layer
            Layer of log-normalized expression (``None`` = ``X``).
        sep
            Separator of the targets of a combination.

        Returns
        -------
        ``None``; writes ``adata.uns['_scpredict'][ClassName]`` (the JSON setup record).
        """
        cls._setup_perturbation(
            adata,
            perturbation_key=perturbation_key,
            control=control,
            covariate_keys=covariate_keys,
            layer=layer,
            sep=sep,
        )

    @classmethod
    def _setup_perturbation(
        cls,
        adata: AnnData,
        *,
        perturbation_key: str,
        control: str = "control",
        covariate_keys: Sequence[str] | None = None,
        layer: str | None = None,
        sep: str = "+",
        scale: Scale | None = None,
        categorical: Mapping[str, str | None] | None = None,
        continuous: Mapping[str, str | None] | None = None,
        obsm: Mapping[str, str | None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Validate and record the perturbation setup; subclasses call this from their own ``setup_anndata``
        and may register further inputs (``categorical``/``continuous``/``obsm``/``extra``, as in
        :meth:`BaseModel._setup`)."""
        covs = [str(c) for c in (covariate_keys or [])]
        if isinstance(covariate_keys, str):
            covs = [covariate_keys]
        check_keys(adata, obs=[perturbation_key, *covs])
        labels = adata.obs[perturbation_key].astype(str)
        if control not in set(labels):
            values = sorted(set(labels))[:8]
            raise ValueError(
                f"control label {control!r} does not occur in adata.obs[{perturbation_key!r}] (values e.g. "
                f"{values}); pass control=<the label of your control cells>."
            )
        if covs:
            ctrl_covs = {
                tuple(r) for r in adata.obs.loc[labels.to_numpy() == control, covs].astype(str).values
            }
            all_covs = {tuple(r) for r in adata.obs[covs].astype(str).values}
            lacking = sorted(all_covs - ctrl_covs)
            if lacking:
                raise ValueError(
                    f"no control cells for covariate values {lacking[:5]} of {covs}; every covariate value "
                    "needs its own control cells."
                )
        cats: dict[str, str | None] = {PERTURBATION_REGISTRY_KEY: perturbation_key}
        cats.update({covariate_registry_key(c): c for c in covs})
        cats.update(dict(categorical or {}))
        info = {"perturbation_key": perturbation_key, "control": control, "covariate_keys": covs, "sep": sep}
        cls._setup(
            adata,
            layer=layer,
            scale=scale or cls._setup_scale,
            categorical=cats,
            continuous=continuous,
            obsm=obsm,
            extra={**info, **dict(extra or {})},
        )

    # ------------------------------------------------------------------ what the model knows
    @property
    def perturbation_key(self) -> str:
        """``obs`` column of perturbation labels."""
        return self.setup_.extra["perturbation_key"]

    @property
    def control(self) -> str:
        """Label of control cells."""
        return self.setup_.extra["control"]

    @property
    def covariate_keys(self) -> list[str]:
        """``obs`` columns of the covariates (may be empty)."""
        return list(self.setup_.extra.get("covariate_keys", []))

    @property
    def sep(self) -> str:
        """Separator of combination targets."""
        return self.setup_.extra.get("sep", "+")

    @property
    def perturbations_(self) -> list[str]:
        """Perturbation labels present in the training data (control included)."""
        return list(self.vocab_[PERTURBATION_REGISTRY_KEY])

    def covariate_values(self, key: str) -> list[str]:
        """Values of covariate ``key`` seen in training."""
        if key not in self.covariate_keys:
            raise KeyError(f"{key!r} is not a covariate of this model (covariates: {self.covariate_keys}).")
        return list(self.vocab_[covariate_registry_key(key)])

    def targets(self, perturbation: str) -> list[str]:
        """Targets of a label: ``"A+B"`` → ``["A", "B"]``; the control → ``[]``."""
        return parse_targets(perturbation, control=self.control, sep=self.sep)

    # ------------------------------------------------------------------ subclass hooks
    def _unsupported(self, perturbations: Sequence[str]) -> list[str]:
        """Perturbations this model cannot predict. Default: those absent from training. Override to allow
        e.g. combinations of seen singles."""
        known = set(self.perturbations_)
        return sorted({p for p in perturbations if p not in known})

    def _unsupported_hint(self) -> str:
        """One sentence appended to the unknown-perturbation error saying what this model can predict."""
        return "This model predicts only perturbations seen in training."

    @abstractmethod
    def _predict_profiles(self, conditions: pd.DataFrame) -> np.ndarray:
        """Predicted mean log-normalized profile of each condition (every subclass implements it).

        Parameters
        ----------
        conditions
            One row per condition: column ``"perturbation"`` plus one column per covariate key (strings),
            already validated (every perturbation supported, every covariate value known).

        Returns
        -------
        Array (n_conditions, n_vars) in the model's gene order (``self.var_names_``).
        """

    def _predict_cells(self, conditions: pd.DataFrame) -> np.ndarray:
        """Per-cell predictions (n_cells, n_vars) for one condition row per cell. Default: each cell gets the
        profile of its condition (computed once per unique condition). Override for stochastic samples."""
        cols = list(conditions.columns)
        uniq = conditions.drop_duplicates().reset_index(drop=True)
        profiles = np.asarray(self._predict_profiles(uniq))
        rows = pd.MultiIndex.from_frame(uniq[cols]).get_indexer(pd.MultiIndex.from_frame(conditions[cols]))
        return profiles[rows.astype(np.int64)]

    # ------------------------------------------------------------------ validation helpers
    def _check_perturbations(self, perturbations: Sequence[str]) -> None:
        bad = self._unsupported(perturbations)
        if bad:
            raise UnknownPerturbationError(
                f"{type(self).__name__} cannot predict {len(bad)} perturbation(s): {bad[:10]}. "
                f"{self._unsupported_hint()} Known perturbations (training): {self.perturbations_[:15]}"
                f"{' ...' if len(self.perturbations_) > 15 else ''}. Drop them, or train on data that covers "
                "them (their single targets, for combinations)."
            )

    def _check_covariates(self, conditions: pd.DataFrame) -> None:
        for key in self.covariate_keys:
            known = self.covariate_values(key)
            bad = sorted(set(conditions[key]) - set(known))
            if bad:
                raise UnknownPerturbationError(
                    f"covariate {key!r} has values not seen in training: {bad[:10]} (known: {known[:20]})."
                )

    def _conditions_table(
        self,
        perturbations: Sequence[str],
        covariates: Mapping[str, str | Sequence[str]] | pd.DataFrame | None,
    ) -> pd.DataFrame:
        perts = [str(p) for p in ([perturbations] if isinstance(perturbations, str) else perturbations)]
        table = pd.DataFrame({PERTURBATION_REGISTRY_KEY: perts})
        covs = self.covariate_keys
        if covariates is None:
            covariates = {}
        if isinstance(covariates, pd.DataFrame):
            if len(covariates) != len(perts):
                raise ValueError(
                    f"covariates has {len(covariates)} rows but {len(perts)} perturbations were requested."
                )
            covariates = {c: covariates[c].astype(str).tolist() for c in covariates.columns}
        extra = sorted(set(covariates) - set(covs))
        if extra:
            raise KeyError(f"covariates {extra} are not covariates of this model (covariates: {covs}).")
        for key in covs:
            if key in covariates:
                value = covariates[key]
                if isinstance(value, str) or np.isscalar(value):
                    table[key] = str(value)
                else:
                    values = [str(v) for v in value]
                    if len(values) != len(perts):
                        raise ValueError(
                            f"covariates[{key!r}] has {len(values)} values but {len(perts)} perturbations were "
                            "requested; pass one value (used for all) or one per perturbation."
                        )
                    table[key] = values
            else:
                known = self.covariate_values(key)
                if len(known) != 1:
                    raise ValueError(
                        f"this model has covariate {key!r} with several values {known[:10]}; pass "
                        f"covariates={{{key!r}: <value>}}."
                    )
                table[key] = known[0]
        return table

    # ------------------------------------------------------------------ data helpers for subclasses
    def _expression(self, adata: AnnData) -> np.ndarray:
        """Registered layer of ``adata`` as a dense float64 array in the model's gene order (scale checked)."""
        rec = self.setup_
        x = get_array(adata, layer=rec.layer)
        check_input(adata, layer=rec.layer, scale=rec.scale, name=type(self).__name__)  # type: ignore[arg-type]
        alignment = align_genes(
            adata.var_names,
            self.var_names_,
            max_missing=self._max_missing_genes,
            what=f"this {type(self).__name__}",
        )
        x = align_matrix(x, alignment)
        x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
        return np.asarray(x, dtype=np.float64)

    def _cell_conditions(self, adata: AnnData) -> pd.DataFrame:
        """One condition row per cell of ``adata`` (``"perturbation"`` + covariate columns, strings)."""
        check_keys(adata, obs=[self.perturbation_key, *self.covariate_keys])
        table = pd.DataFrame(
            {PERTURBATION_REGISTRY_KEY: adata.obs[self.perturbation_key].astype(str).to_numpy()},
            index=adata.obs_names.copy(),
        )
        for key in self.covariate_keys:
            table[key] = adata.obs[key].astype(str).to_numpy()
        return table

    def _condition_means(
        self, adata: AnnData, indices: Sequence[int] | None = None
    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """Mean registered expression per training condition.

        Returns
        -------
        ``(conditions, means, n_cells)``: a table of conditions (``"perturbation"`` + covariates), the means
        (n_conditions, n_vars, model gene order) and the number of cells of each condition.
        """
        x = self._expression(adata)
        table = self._cell_conditions(adata).reset_index(drop=True)
        if indices is not None:
            idx = np.asarray(indices, dtype=np.int64)
            x, table = x[idx], table.iloc[idx].reset_index(drop=True)
        cols = list(table.columns)
        codes, uniq = pd.factorize(pd.MultiIndex.from_frame(table[cols]), sort=True)
        n = np.bincount(codes, minlength=len(uniq)).astype(np.float64)
        sums = np.zeros((len(uniq), x.shape[1]))
        np.add.at(sums, codes, x)
        conditions = pd.DataFrame(list(uniq), columns=cols)
        return conditions, sums / n[:, None], n.astype(np.int64)

    # ------------------------------------------------------------------ public API
    def get_perturbation_profiles(
        self,
        perturbations: Sequence[str],
        *,
        covariates: Mapping[str, str | Sequence[str]] | pd.DataFrame | None = None,
    ) -> AnnData:
        """Predicted mean log-normalized expression of each requested condition (never mutates anything).

        Parameters
        ----------
        perturbations
            Perturbation labels (``"control"``, ``"A"``, ``"A+B"``); repeats are allowed.
        covariates
            Covariate values: a mapping ``{covariate_key: value}`` (one value for all perturbations) or
            ``{covariate_key: [value per perturbation]}``, or a DataFrame with one row per perturbation. May be
            omitted for a covariate that had a single value in training.

        Returns
        -------
        AnnData with one row per requested condition: ``X`` (n_conditions, n_vars) the predicted profiles,
        ``obs`` the perturbation (under the model's ``perturbation_key``) and covariate columns, ``var`` the
        model's genes, ``uns['scale'] = 'log1p'`` and ``uns['model']`` (the class name).

        Raises
        ------
        UnknownPerturbationError
            Naming the perturbations (or covariate values) the model cannot predict, and what it can.
        """
        if not self.is_trained_:
            raise RuntimeError(f"{type(self).__name__} is not trained; call model.train() first.")
        table = self._conditions_table(perturbations, covariates)
        self._check_perturbations(table[PERTURBATION_REGISTRY_KEY].tolist())
        self._check_covariates(table)
        values = np.asarray(self._predict_profiles(table), dtype=np.float32)
        obs = table.rename(columns={PERTURBATION_REGISTRY_KEY: self.perturbation_key})
        obs.index = [
            "|".join(map(str, r)) if len(r) > 1 else str(r[0]) for r in obs.itertuples(index=False, name=None)
        ]
        obs.index = pd.Index(obs.index).astype(str)
        if not obs.index.is_unique:
            obs.index = [f"{i}-{k}" for k, i in enumerate(obs.index)]
        for c in obs.columns:
            obs[c] = pd.Categorical(obs[c])
        return AnnData(
            X=values,
            obs=obs,
            var=pd.DataFrame(index=pd.Index(self.var_names_)),
            uns={"scale": "log1p", "model": type(self).__name__},
        )

    def predict(self, adata: AnnData | None = None, *, key_added: str | None = None) -> None:
        """Predict each cell's expression under its own condition (``obs[perturbation_key]`` + covariates).

        Parameters
        ----------
        adata
            Cells to predict (default: the training data); only ``obs`` is read, so cells of any condition the
            model supports may be given, with or without their measured expression.
        key_added
            Key of the written slots (default: the model class name in snake case, e.g. ``"mean_baseline"``).

        Returns
        -------
        ``None``; writes

        - ``adata.layers[key_added]`` : float32 (n_obs, n_vars), predicted log-normalized expression in
          ``adata.var_names`` order (NaN for genes the model does not know)
        - ``adata.uns[key_added]`` : ``params`` (perturbation key, control, covariates), ``model``,
          ``init_params``, ``version``, ``var_names`` (the model's genes)

        Nothing is written when a check fails (unknown perturbation, missing ``obs`` column).
        """
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("pass `adata=`: this model was loaded without an AnnData.")
        if not self.is_trained_:
            raise RuntimeError(f"{type(self).__name__} is not trained; call model.train() first.")
        key_added = key_added or _snake(type(self).__name__)
        table = self._cell_conditions(adata).reset_index(drop=True)
        self._check_perturbations(sorted(set(table[PERTURBATION_REGISTRY_KEY])))
        self._check_covariates(table)
        values = np.asarray(self._predict_cells(table), dtype=np.float32)
        values = self._to_query_genes(values, adata)
        adata.layers[key_added] = values
        self._record(
            adata,
            key_added,
            {
                "perturbation_key": self.perturbation_key,
                "control": self.control,
                "covariate_keys": self.covariate_keys,
                "scale": "log1p",
            },
        )
