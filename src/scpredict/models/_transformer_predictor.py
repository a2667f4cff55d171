"""TransformerPredictor: the BiMamba predictor with a standard Transformer encoder as its backbone."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from anndata import AnnData

from ._bimamba import BiMambaPredictor

__all__ = ["TransformerPredictor"]


class TransformerPredictor(BiMambaPredictor):
    """The :class:`BiMambaPredictor` with Transformer encoder layers in place of the BiMamba blocks.

    Same gene tokens, condition encoder, heads, training and outputs; the backbone is ``n_layers``
    ``torch.nn.TransformerEncoderLayer`` of width ``d_model`` (pre-norm, ``4 * d_model`` feed-forward). Full
    self-attention costs O(G²) time (and, with dropout, O(G²) memory) per condition: the reference the seed argues
    against for whole transcriptomes (see ``benchmarks/bimamba_scaling.py``).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    head
        ``"linear"`` or ``"probabilistic"`` (see :class:`BiMambaPredictor`).
    d_model, n_layers
        Width and depth.
    n_heads
        Attention heads.
    gene_identity_dim, position_dim, n_frequencies, cond_dim, pathway_key, dropout_rate, condition_dropout
        As in :class:`BiMambaPredictor`.

    Examples
    --------
    >>> import scpredict as sp
    >>> adata = sp.datasets.synthetic_perturbation(n_cells=200, n_genes=30)
    >>> sp.models.TransformerPredictor.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = sp.models.TransformerPredictor(adata, d_model=16, n_layers=1)
    >>> model.train(max_epochs=1)
    >>> model.get_perturbation_profiles(["control"]).shape
    (1, 30)
    """

    _backbone: ClassVar[str] = "transformer"

    def __init__(
        self,
        adata: AnnData,
        *,
        head: Literal["linear", "probabilistic"] = "linear",
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        gene_identity_dim: int = 32,
        position_dim: int = 16,
        n_frequencies: int = 16,
        cond_dim: int = 64,
        pathway_key: str = "X_pathway",
        dropout_rate: float = 0.0,
        condition_dropout: float = 0.3,
        **kwargs: Any,
    ) -> None:
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
            dropout_rate=dropout_rate,
            condition_dropout=condition_dropout,
            n_heads=n_heads,
            **kwargs,
        )
