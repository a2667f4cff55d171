"""TabNet network (Arik & Pfister 2021) as used by scTab (Fischer et al. 2024).

Written from the papers:

- S. Ö. Arik and T. Pfister, "TabNet: Attentive Interpretable Tabular Learning", AAAI 2021.
  A decision step reads a masked view of the input; the mask comes from an *attentive transformer*
  (FC → ghost batch norm → multiplication by a prior → sparsemax). A *feature transformer* (GLU blocks,
  some shared between steps, some step-specific, residuals scaled by √0.5) turns the masked input into a
  decision part ``d`` (ReLU, summed over steps into the embedding) and an attention part ``a`` (input of the
  next step's attentive transformer). The prior ``P = Π_j (γ − M_j)`` discourages re-using features and the
  entropy of the masks is a sparsity regulariser.
- A. F. T. Martins and R. F. Astudillo, "From Softmax to Sparsemax", ICML 2016 (the mask activation).
- E. Hoffer et al., "Train longer, generalize better", NeurIPS 2017 (ghost batch normalisation).
- F. Fischer et al., "scTab: Scaling cross-tissue single-cell annotation models", Nat Commun 2024: TabNet on
  log1p(10k-normalised) expression of a fixed gene space, ``n_d = n_a = 128``, one to few decision steps,
  ``γ = 1.3``, sparsity weight ``1e-5``, ghost batches of 256 cells; the cell embedding is the aggregated
  decision output of the feature transformer (before the classification head).

The module is pure torch; it never imports anndata.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..train import LossOutput

__all__ = [
    "GhostBatchNorm",
    "GLUBlock",
    "FeatureTransformer",
    "AttentiveTransformer",
    "TabNetModule",
    "TabNetDecoder",
    "TabNetPretrainer",
    "sparsemax",
    "entmax15",
    "adjusted_cross_entropy",
]


class _Sparsemax(torch.autograd.Function):
    """Sparsemax along the last dimension with its closed-form Jacobian-vector product."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = z - z.max(dim=-1, keepdim=True).values  # shift-invariant; improves numerics
        z_sorted, _ = torch.sort(z, dim=-1, descending=True)
        cumsum = z_sorted.cumsum(dim=-1)
        k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        support = 1 + k * z_sorted > cumsum  # k(z) = max{k : 1 + k z_(k) > Σ_{j≤k} z_(j)}
        k_z = support.sum(dim=-1, keepdim=True)
        tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
        out = torch.clamp(z - tau, min=0.0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (out,) = ctx.saved_tensors
        on = out > 0
        n_on = on.sum(dim=-1, keepdim=True).to(grad_out.dtype)
        mean = (grad_out * on).sum(dim=-1, keepdim=True) / n_on
        return torch.where(on, grad_out - mean, torch.zeros_like(grad_out))


class _Entmax15(torch.autograd.Function):
    """1.5-entmax along the last dimension (exact sort-based algorithm of Peters et al. 2019)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = z / 2
        z = z - z.max(dim=-1, keepdim=True).values
        z_sorted, _ = torch.sort(z, dim=-1, descending=True)
        rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        mean = z_sorted.cumsum(dim=-1) / rho
        mean_sq = (z_sorted**2).cumsum(dim=-1) / rho
        ss = rho * (mean_sq - mean**2)
        delta = ((1 - ss) / rho).clamp_min(0.0)
        tau = mean - torch.sqrt(delta)
        support = (tau <= z_sorted).sum(dim=-1, keepdim=True)
        tau_star = tau.gather(-1, support - 1)
        out = torch.clamp(z - tau_star, min=0.0) ** 2
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (out,) = ctx.saved_tensors
        g = out.sqrt()
        dz = grad_out * g
        q = dz.sum(dim=-1, keepdim=True) / g.sum(dim=-1, keepdim=True)
        return dz - q * g


def entmax15(z: torch.Tensor) -> torch.Tensor:
    """1.5-entmax of each row of ``z`` (Peters, Niculae & Martins 2019): sparse like sparsemax, but smoother.

    ``entmax15(z)_i = [z_i / 2 − τ]₊²`` with ``τ`` chosen so that each row sums to one; it keeps more
    non-zero entries than sparsemax for the same scores (scTab's TabNet uses it for its masks).

    Parameters
    ----------
    z
        Scores, normalised along the last dimension.

    Returns
    -------
    Non-negative tensor of the same shape whose last dimension sums to one.
    """
    return _Entmax15.apply(z)


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``z`` onto the probability simplex (Martins & Astudillo 2016).

    Parameters
    ----------
    z
        Scores, projected along the last dimension.

    Returns
    -------
    Non-negative tensor of the same shape whose last dimension sums to one; small scores become exactly 0.
    """
    return _Sparsemax.apply(z)


class GhostBatchNorm(nn.Module):
    """Batch normalisation over "virtual" batches (Hoffer et al. 2017).

    In training, the batch is split into chunks of ``virtual_batch_size`` rows, each normalised with its own
    statistics (running statistics are updated from every chunk); in evaluation the running statistics are
    used, exactly as in :class:`torch.nn.BatchNorm1d`.

    Parameters
    ----------
    n_features
        Number of features.
    virtual_batch_size
        Rows per ghost batch.
    momentum
        Momentum of the running statistics.
    """

    def __init__(self, n_features: int, *, virtual_batch_size: int = 256, momentum: float = 0.02) -> None:
        super().__init__()
        self.virtual_batch_size = int(virtual_batch_size)
        self.bn = nn.BatchNorm1d(n_features, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.training or x.shape[0] <= self.virtual_batch_size:
            if self.training and x.shape[0] == 1:
                # batch norm cannot estimate a variance from one row; use running statistics
                return F.batch_norm(
                    x,
                    self.bn.running_mean,
                    self.bn.running_var,
                    self.bn.weight,
                    self.bn.bias,
                    False,
                    0.0,
                    self.bn.eps,
                )
            return self.bn(x)
        n_chunks = math.ceil(x.shape[0] / self.virtual_batch_size)
        chunks = x.chunk(n_chunks, dim=0)
        return torch.cat([self.bn(c) if c.shape[0] > 1 else self._eval_bn(c) for c in chunks], dim=0)

    def _eval_bn(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class GLUBlock(nn.Module):
    """``FC → ghost BN → GLU``: a linear layer to ``2·n_out`` units gated by a sigmoid half.

    A layer shared between decision steps (``fc=``) is referenced, not registered, here: it is registered
    once by its owner, so it appears once in a ``state_dict`` (safetensors refuses aliased tensors).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        fc: nn.Linear | None = None,
        virtual_batch_size: int = 256,
        momentum: float = 0.02,
    ) -> None:
        super().__init__()
        if fc is None:
            self.fc = nn.Linear(n_in, 2 * n_out, bias=False)
            self._shared: tuple[nn.Linear, ...] = ()
        else:
            self.fc = None
            self._shared = (fc,)  # a tuple attribute is not registered as a submodule
        self.bn = GhostBatchNorm(2 * n_out, virtual_batch_size=virtual_batch_size, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        fc = self.fc if self.fc is not None else self._shared[0]
        return F.glu(self.bn(fc(x)), dim=-1)


class FeatureTransformer(nn.Module):
    """Stack of GLU blocks: the first ``len(shared)`` use layers shared across decision steps.

    Every block after the first adds its input back, scaled by √0.5 to keep the variance constant
    (Arik & Pfister 2021, Fig. 4).

    Parameters
    ----------
    n_in
        Input width (number of genes).
    n_out
        Output width, ``n_d + n_a``.
    shared
        Linear layers shared by all steps (the first maps ``n_in → 2·n_out``, the others ``n_out → 2·n_out``).
    n_independent
        Step-specific GLU blocks after the shared ones.
    virtual_batch_size, momentum
        Ghost batch norm settings.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        shared: nn.ModuleList,
        n_independent: int,
        virtual_batch_size: int = 256,
        momentum: float = 0.02,
    ) -> None:
        super().__init__()
        kw = {"virtual_batch_size": virtual_batch_size, "momentum": momentum}
        blocks = [GLUBlock(n_in, n_out, fc=fc, **kw) for fc in shared]
        for i in range(n_independent):
            blocks.append(GLUBlock(n_in if (i == 0 and not blocks) else n_out, n_out, **kw))
        if not blocks:
            msg = "a feature transformer needs at least one shared or independent GLU block."
            raise ValueError(msg)
        self.blocks = nn.ModuleList(blocks)
        self.scale = math.sqrt(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.blocks[0](x)
        for block in self.blocks[1:]:
            h = (h + block(h)) * self.scale
        return h


class AttentiveTransformer(nn.Module):
    """``mask = sparsemax(P · GBN(FC(a)) / τ)`` (or 1.5-entmax) with the prior ``P`` of feature re-use.

    The temperature ``τ`` (``mask_temperature``) sets how many features a mask keeps at initialisation: on
    2,000 standard-normal scores 1.5-entmax keeps ≈ 22 features at ``τ = 1``, ≈ 170 at ``τ = 4``, ≈ 450 at
    ``τ = 8`` (the mask stays sparse: most features get exactly zero).
    """

    def __init__(
        self,
        n_a: int,
        n_features: int,
        *,
        virtual_batch_size: int = 256,
        momentum: float = 0.02,
        mask_type: str = "sparsemax",
        mask_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if mask_type not in ("sparsemax", "entmax"):
            msg = f"mask_type must be 'sparsemax' or 'entmax', got {mask_type!r}."
            raise ValueError(msg)
        if mask_temperature <= 0:
            msg = f"mask_temperature must be > 0, got {mask_temperature}."
            raise ValueError(msg)
        self.mask_type = mask_type
        self.mask_temperature = float(mask_temperature)
        self.fc = nn.Linear(n_a, n_features, bias=False)
        self.bn = GhostBatchNorm(n_features, virtual_batch_size=virtual_batch_size, momentum=momentum)

    def forward(self, a: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:  # noqa: D102
        z = self.bn(self.fc(a)) * prior / self.mask_temperature
        return entmax15(z) if self.mask_type == "entmax" else sparsemax(z)


def adjusted_cross_entropy(
    logits: torch.Tensor,
    y: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    logit_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits + logit_offset`` with label smoothing towards ``softmax(logit_offset)``.

    With ``logit_offset = τ · log π`` this is the logit-adjusted loss of Menon et al. (2021, "Long-tail
    learning via logit adjustment", ICLR). Label smoothing (Szegedy et al. 2016) mixes the one-hot target
    with a smoothing distribution ``u``: uniform (``1/k``) without an offset, exactly as
    ``F.cross_entropy(..., label_smoothing=ε)``; ``u = softmax(logit_offset) ∝ π^τ`` with one. Uniform
    smoothing would be inconsistent with the adjustment: the adjusted softmax then fits
    ``(1 − ε) p(y|x) + ε/k``, and the plain logits (its ratio to ``π^τ``) would inflate every rare class by
    ``ε / (k π_c^τ)`` for *all* cells; smoothing towards ``π^τ`` adds the same ``ε`` to every class's ratio
    instead, so the plain logits keep the ranking of ``p(y|x) / π_y^τ``. Class weights enter both terms as
    in :func:`torch.nn.functional.cross_entropy` (mean over ``Σ_i w_{y_i}``).

    Parameters
    ----------
    logits
        ``(n_cells, n_classes)`` plain logits.
    y
        ``(n_cells,)`` class indices.
    weight
        ``(n_classes,)`` class weights or ``None``.
    label_smoothing
        ``ε`` in ``[0, 1]``.
    logit_offset
        ``(n_classes,)`` offsets added to the logits, or ``None`` (an all-zero offset gives the same value).

    Returns
    -------
    The scalar mean loss.
    """
    if logit_offset is None:
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing)
    z = logits + logit_offset
    loss = F.cross_entropy(z, y, weight=weight, label_smoothing=label_smoothing)
    if label_smoothing == 0:
        return loss
    k = z.shape[-1]
    # PyTorch's smoothing term is −(ε/k) Σ_c w_c log q_c; replace 1/k by u_c (exactly 0 when u is uniform)
    delta = torch.softmax(logit_offset, dim=-1) - 1.0 / k
    if weight is not None:
        delta = delta * weight
        denom = weight[y].sum()
    else:
        denom = z.new_tensor(float(y.shape[0]))
    correction = -(F.log_softmax(z, dim=-1) * delta).sum() / denom
    return loss + label_smoothing * correction


class TabNetModule(nn.Module):
    """TabNet encoder plus a linear classification head.

    Parameters
    ----------
    n_input
        Number of input features (genes).
    n_classes
        Number of classes.
    n_d
        Width of the decision output of each step; also the embedding width.
    n_a
        Width of the attention output that feeds the next step's mask.
    n_steps
        Number of decision steps.
    gamma
        Relaxation of the feature re-use prior (1 = a feature is used by at most one step).
    n_shared
        GLU blocks shared across steps.
    n_independent
        Step-specific GLU blocks.
    virtual_batch_size
        Ghost batch size.
    momentum
        Batch-norm momentum.
    dropout_rate
        Dropout on the embedding before the head.
    mask_eps
        Constant inside the log of the sparsity (entropy) regulariser.
    lambda_sparse
        Weight of the sparsity regulariser in :meth:`loss`.
    mask_type
        Mask activation: ``"sparsemax"`` (TabNet paper) or ``"entmax"`` (1.5-entmax, as in scTab).
    log_normalize_input
        Turn raw counts into ``log1p(counts / total · 10⁴)`` first (scTab's preprocessing).
    mask_temperature
        Divides the attention scores before the mask activation; larger = more features per mask (still
        sparse). See :class:`AttentiveTransformer`.
    input_norm
        ``"batch"`` (the TabNet paper: a batch norm standardises each input feature) or ``"none"`` (the
        input as it is, e.g. log1p expression; the batch norms inside the GLU blocks still normalise the
        hidden units).
    input_dropout
        Training-time augmentation: each gene of each training cell is set to zero with this probability
        (no rescaling; it mimics extra dropout events of the capture), a fresh draw every batch.
    label_smoothing
        Label smoothing of the cross-entropy (Szegedy et al. 2016).
    mixup_alpha
        Training-time mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", ICLR): each
        training batch is replaced by ``λ·x + (1 − λ)·x[π]`` (on the transformed, log1p scale; ``π`` a random
        permutation of the batch, ``λ ~ Beta(α, α)`` per batch) and the cross-entropy by
        ``λ·CE(y) + (1 − λ)·CE(y[π])``. 0 = off.
    """

    def __init__(
        self,
        n_input: int,
        n_classes: int,
        *,
        n_d: int = 128,
        n_a: int = 64,
        n_steps: int = 1,
        gamma: float = 1.3,
        n_shared: int = 2,
        n_independent: int = 2,
        virtual_batch_size: int = 256,
        momentum: float = 0.1,
        dropout_rate: float = 0.0,
        mask_eps: float = 1e-15,
        lambda_sparse: float = 1e-5,
        mask_type: str = "sparsemax",
        log_normalize_input: bool = False,
        mask_temperature: float = 1.0,
        input_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        input_norm: str = "batch",
    ) -> None:
        super().__init__()
        if input_norm not in ("batch", "none"):
            msg = f"input_norm must be 'batch' or 'none', got {input_norm!r}."
            raise ValueError(msg)
        self.input_norm = input_norm
        if mixup_alpha < 0:
            msg = f"mixup_alpha must be >= 0, got {mixup_alpha}."
            raise ValueError(msg)
        self.mixup_alpha = float(mixup_alpha)
        if not 0.0 <= input_dropout < 1.0:
            msg = f"input_dropout must be in [0, 1), got {input_dropout}."
            raise ValueError(msg)
        self.input_dropout = float(input_dropout)
        self.label_smoothing = float(label_smoothing)
        self.lambda_sparse = float(lambda_sparse)
        self.log_normalize_input = bool(log_normalize_input)
        if n_steps < 1:
            msg = f"n_steps must be >= 1, got {n_steps}."
            raise ValueError(msg)
        self.n_input, self.n_classes = int(n_input), int(n_classes)
        self.n_d, self.n_a, self.n_steps, self.gamma = int(n_d), int(n_a), int(n_steps), float(gamma)
        self.mask_eps = float(mask_eps)
        kw = {"virtual_batch_size": virtual_batch_size, "momentum": momentum}
        n_hidden = self.n_d + self.n_a
        # the TabNet paper's input batch norm standardises every gene; "none" feeds the log-expression as it is
        self.input_bn = (
            nn.BatchNorm1d(self.n_input, momentum=momentum) if input_norm == "batch" else nn.Identity()
        )
        shared = nn.ModuleList(
            [
                nn.Linear(self.n_input if i == 0 else n_hidden, 2 * n_hidden, bias=False)
                for i in range(n_shared)
            ]
        )
        self.shared = shared
        # step 0 only produces the attention for the first mask; steps 1..n_steps produce decisions.
        self.feature_transformers = nn.ModuleList(
            [
                FeatureTransformer(self.n_input, n_hidden, shared=shared, n_independent=n_independent, **kw)
                for _ in range(self.n_steps + 1)
            ]
        )
        self.attentive_transformers = nn.ModuleList(
            [
                AttentiveTransformer(
                    self.n_a, self.n_input, mask_type=mask_type, mask_temperature=mask_temperature, **kw
                )
                for _ in range(self.n_steps)
            ]
        )
        self.dropout = nn.Dropout(dropout_rate)
        self.head = nn.Linear(self.n_d, self.n_classes)

    def encode(self, x: torch.Tensor, *, obfuscation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the decision steps.

        Parameters
        ----------
        x
            ``(n_cells, n_input)`` input.
        obfuscation
            Optional binary ``(n_cells, n_input)`` matrix ``S`` of the self-supervised task (Arik & Pfister
            2021, §"Self-supervised learning"): the features with ``S = 1`` are hidden — the encoder reads
            ``(1 − S) · x`` and the mask prior starts at ``1 − S``, so no step attends to a hidden feature.

        Returns
        -------
        ``{"embedding": (n_cells, n_d) sum of ReLU decision outputs, "masks": (n_steps, n_cells, n_input),
        "sparsity_loss": scalar mean entropy of the masks, "steps": (n_steps, n_cells, n_d) the ReLU decision
        output of each step, "target": (n_cells, n_input) the transformed input before batch norm}``.
        """
        return self._encode(self._transform(x), obfuscation=obfuscation)

    def _encode(self, target: torch.Tensor, *, obfuscation: torch.Tensor | None = None) -> dict:
        """:meth:`encode` of an already transformed input (``log1p`` of normalised counts if the input is
        counts)."""
        x = self.input_bn(target)
        prior = torch.ones_like(x)
        if obfuscation is not None:
            keep = 1.0 - obfuscation.to(x.dtype)
            x = x * keep
            prior = keep
        a = self.feature_transformers[0](x)[:, self.n_d :]
        embedding = x.new_zeros(x.shape[0], self.n_d)
        masks, steps = [], []
        entropy = x.new_zeros(())
        for step in range(self.n_steps):
            mask = self.attentive_transformers[step](a, prior)
            masks.append(mask)
            entropy = entropy + (-mask * torch.log(mask + self.mask_eps)).sum(dim=-1).mean()
            prior = prior * (self.gamma - mask)
            h = self.feature_transformers[step + 1](mask * x)
            d = F.relu(h[:, : self.n_d])
            steps.append(d)
            embedding = embedding + d
            a = h[:, self.n_d :]
        return {
            "embedding": embedding,
            "masks": torch.stack(masks),
            "sparsity_loss": entropy / self.n_steps,
            "steps": torch.stack(steps),
            "target": target,
        }

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_normalize_input:
            return torch.log1p(x * (1e4 / x.sum(dim=1, keepdim=True).clamp_min(1.0)))
        return x

    def loss(
        self,
        batch: dict[str, torch.Tensor],
        *,
        class_weight: torch.Tensor | None = None,
        logit_offset: torch.Tensor | None = None,
    ) -> LossOutput:
        """Cross-entropy plus ``lambda_sparse`` × mask entropy; accuracy and sparsity as metrics.

        In training mode the input is augmented by gene dropout (``input_dropout``) and mixup
        (``mixup_alpha``), and the cross-entropy uses ``label_smoothing`` and the per-class weights
        ``class_weight``. ``logit_offset`` (the logit adjustment ``τ · log π`` of Menon et al. 2021,
        "Long-tail learning via logit adjustment", ICLR) is added to the logits inside the cross-entropy
        in training *and* evaluation mode — the adjusted logits model the classes at the training
        frequencies, so the validation loss is the held-out value of the training objective — while the
        accuracy (and prediction, :meth:`forward`) uses the plain logits, which then estimate the
        class-balanced posterior. Smoothing, weights and both mixup terms all act on the adjusted logits,
        and with an offset the smoothing goes towards ``softmax(logit_offset)`` instead of uniform
        (:func:`adjusted_cross_entropy`).
        The logged ``cross_entropy`` is always the plain, unweighted, unadjusted one.

        Parameters
        ----------
        batch
            ``{"X": (n_cells, n_input), "labels": (n_cells, 1)}``.
        class_weight
            ``(n_classes,)`` weights of the training cross-entropy (e.g. inverse class frequencies).
        logit_offset
            ``(n_classes,)`` offsets added to the logits in the cross-entropy; ``None`` = no adjustment
            (an all-zero offset gives the same loss).

        Returns
        -------
        :class:`~scpredict.train.LossOutput` with the metrics ``cross_entropy``, ``accuracy`` and ``sparsity``,
        and the batch's labels and plain logits (the plan logs epoch-level macro F1 and balanced accuracy).
        """
        y = batch["labels"].long().squeeze(-1)
        x = batch["X"]
        if self.training and self.input_dropout > 0:
            x = x * (torch.rand_like(x) >= self.input_dropout).to(x.dtype)
        smooth = self.label_smoothing if self.training else 0.0
        weight = (
            class_weight.to(device=x.device, dtype=x.dtype)
            if class_weight is not None and self.training
            else None
        )
        offset = logit_offset.to(device=x.device, dtype=x.dtype) if logit_offset is not None else None
        if self.training and self.mixup_alpha > 0 and y.shape[0] > 1:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(y.shape[0], device=x.device)
            t = self._transform(x)
            out = self._encode(lam * t + (1.0 - lam) * t[perm])
            out["logits"] = self.head(self.dropout(out["embedding"]))
            ce = F.cross_entropy(out["logits"], y)  # logged against the first cell's labels of each pair
            kw = {"weight": weight, "label_smoothing": smooth, "logit_offset": offset}
            fit = lam * adjusted_cross_entropy(out["logits"], y, **kw) + (1.0 - lam) * adjusted_cross_entropy(
                out["logits"], y[perm], **kw
            )
        else:
            out = self(x)
            ce = F.cross_entropy(out["logits"], y)
            fit = ce
            if smooth > 0 or weight is not None or offset is not None:
                fit = adjusted_cross_entropy(
                    out["logits"], y, weight=weight, label_smoothing=smooth, logit_offset=offset
                )
        acc = (out["logits"].argmax(dim=-1) == y).float().mean()
        return LossOutput(
            loss=fit + self.lambda_sparse * out["sparsity_loss"],
            metrics={"cross_entropy": ce, "accuracy": acc, "sparsity": out["sparsity_loss"]},
            n_obs=y.shape[0],
            predictions=(y, out["logits"]),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode and classify: adds ``"logits"`` ``(n_cells, n_classes)`` to :meth:`encode`'s dict."""
        out = self.encode(x)
        out["logits"] = self.head(self.dropout(out["embedding"]))
        return out

    def feature_importance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-cell aggregate feature importance (Arik & Pfister 2021, eq. 5), rows summing to one.

        Each step's mask is weighted by that step's contribution ``Σ_c ReLU(d_c)`` to the decision.
        """
        x_bn = self.input_bn(self._transform(x))
        prior = torch.ones_like(x_bn)
        a = self.feature_transformers[0](x_bn)[:, self.n_d :]
        agg = torch.zeros_like(x_bn)
        for step in range(self.n_steps):
            mask = self.attentive_transformers[step](a, prior)
            prior = prior * (self.gamma - mask)
            h = self.feature_transformers[step + 1](mask * x_bn)
            agg = agg + mask * F.relu(h[:, : self.n_d]).sum(dim=-1, keepdim=True)
            a = h[:, self.n_d :]
        return agg / agg.sum(dim=-1, keepdim=True).clamp_min(1e-12)


class TabNetDecoder(nn.Module):
    """TabNet decoder of the self-supervised task (Arik & Pfister 2021, Fig. 2): one feature transformer
    per decision step on that step's decision output, summed, then a linear map to the features.

    Parameters
    ----------
    n_d
        Decision width of the encoder.
    n_output
        Number of reconstructed features (genes).
    n_steps
        Decision steps of the encoder.
    n_shared, n_independent
        Shared and step-specific GLU blocks of each decoder feature transformer.
    virtual_batch_size, momentum
        Ghost batch norm settings.
    """

    def __init__(
        self,
        n_d: int,
        n_output: int,
        *,
        n_steps: int,
        n_shared: int = 1,
        n_independent: int = 1,
        virtual_batch_size: int = 256,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        kw = {"virtual_batch_size": virtual_batch_size, "momentum": momentum}
        self.shared = nn.ModuleList([nn.Linear(n_d, 2 * n_d, bias=False) for _ in range(n_shared)])
        self.transformers = nn.ModuleList(
            [
                FeatureTransformer(n_d, n_d, shared=self.shared, n_independent=n_independent, **kw)
                for _ in range(n_steps)
            ]
        )
        self.out = nn.Linear(n_d, n_output, bias=False)

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``(n_cells, n_output)`` features from the ``(n_steps, n_cells, n_d)`` step outputs."""
        h = sum(t(d) for t, d in zip(self.transformers, steps, strict=True))
        return self.out(h)


class TabNetPretrainer(nn.Module):
    """Self-supervised pretraining of a :class:`TabNetModule` encoder (Arik & Pfister 2021, §"Self-supervised
    learning").

    Each batch draws a binary obfuscation matrix ``S`` (each feature of each cell hidden with probability
    ``pretraining_ratio``); the encoder reads the visible features, :class:`TabNetDecoder` reconstructs all of
    them, and the loss is the squared reconstruction error of the hidden ones, each feature standardised by
    its mean and standard deviation over the pretraining cells, averaged over the hidden features of a cell:
    ``Σ_j S_j (f̂_j − (f_j − μ_j) / σ_j)² / Σ_j S_j`` (the paper's normalised loss; predicting the mean
    scores 1). The encoder's classification head is not used.

    Parameters
    ----------
    encoder
        The TabNet whose encoder is pretrained (its parameters are shared, not copied).
    feature_mean, feature_var
        ``(n_input,)`` means and variances of the transformed features over the pretraining cells (zero
        variances become 1).
    pretraining_ratio
        Probability of hiding each feature.
    n_shared, n_independent
        GLU blocks of the decoder's feature transformers.
    """

    def __init__(
        self,
        encoder: TabNetModule,
        feature_mean: torch.Tensor,
        feature_var: torch.Tensor,
        *,
        pretraining_ratio: float = 0.2,
        n_shared: int = 1,
        n_independent: int = 1,
        virtual_batch_size: int = 256,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not 0.0 < pretraining_ratio < 1.0:
            msg = f"pretraining_ratio must be in (0, 1), got {pretraining_ratio}."
            raise ValueError(msg)
        self.encoder = encoder
        self.pretraining_ratio = float(pretraining_ratio)
        self.decoder = TabNetDecoder(
            encoder.n_d,
            encoder.n_input,
            n_steps=encoder.n_steps,
            n_shared=n_shared,
            n_independent=n_independent,
            virtual_batch_size=virtual_batch_size,
            momentum=momentum,
        )
        var = torch.as_tensor(feature_var, dtype=torch.float32).clone()
        var[var <= 0] = 1.0
        self.register_buffer("feature_mean", torch.as_tensor(feature_mean, dtype=torch.float32).clone())
        self.register_buffer("feature_sd", var.sqrt())

    def reconstruction(
        self, x: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised reconstruction error of the hidden features (a fresh ``S`` per call), without the
        sparsity term.

        Parameters
        ----------
        x
            ``(n_cells, n_input)`` input, on the encoder's input scale.
        generator
            Random generator of ``S`` (for a reproducible evaluation).

        Returns
        -------
        ``(rec, sparsity)``: the scalar mean reconstruction error over cells and the encoder's mask entropy.
        """
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        s = (u < self.pretraining_ratio).to(x.dtype)
        out = self.encoder.encode(x, obfuscation=s)
        rec = self.decoder(out["steps"])
        z = (out["target"].detach() - self.feature_mean) / self.feature_sd
        err = ((rec - z) * s) ** 2
        per_cell = err.sum(dim=-1) / s.sum(dim=-1).clamp_min(1.0)
        return per_cell.mean(), out["sparsity_loss"]

    def loss(self, batch: dict[str, torch.Tensor], *, generator: torch.Generator | None = None) -> LossOutput:
        """Training objective: reconstruction error + ``lambda_sparse`` × mask entropy (a fresh ``S`` per call).

        Parameters
        ----------
        batch
            ``{"X": (n_cells, n_input)}`` input on the encoder's input scale (other keys are ignored).
        generator
            Random generator of ``S`` (fixed masks for a reproducible validation loss).

        Returns
        -------
        :class:`~scpredict.train.LossOutput` with the metrics ``reconstruction`` and ``sparsity``.
        """
        x = batch["X"].float()
        rec, sparsity = self.reconstruction(x, generator=generator)
        return LossOutput(
            loss=rec + self.encoder.lambda_sparse * sparsity,
            metrics={"reconstruction": rec, "sparsity": sparsity},
            n_obs=x.shape[0],
        )
