"""Models: one user-facing class per file, loaded lazily so that ``import scpredict`` stays free of torch.

Every model follows one lifecycle: ``Model.setup_anndata(adata, ...)``, ``Model(adata, ...)``, ``.train()``,
``.predict(adata, key_added=...)``, ``.save(dir)`` / ``Model.load(dir, adata=...)``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> private module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "BaseModel": "._base",
    "PerturbationModel": "._perturbation_base",
    "ControlBaseline": "._baselines",
    "MeanBaseline": "._baselines",
    "AdditiveBaseline": "._baselines",
    "LinearBaseline": "._baselines",
    "DrugResponseTransformer": "._drug_response",
    "LogisticRegressionClassifier": "._logreg",
    "XGBoostClassifier": "._xgboost",
    "LinearClassifier": "._linear_classifier",
    "TabNetClassifier": "._tabnet",
    "ScoreClassifier": "._score",
    "EmbeddingDiffusion": "._embedding_diffusion",
    "ContextCycleAE": "._cycle_ae",
    "ScoreDiffusion": "._diffusion",
    "BiMambaPredictor": "._bimamba",
    "TransformerPredictor": "._transformer_predictor",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        obj = getattr(module, name)
        globals()[name] = obj
        return obj
    raise AttributeError(f"module 'scpredict.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
