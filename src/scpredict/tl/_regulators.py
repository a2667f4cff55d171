"""Link a designed (or any) expression program to candidate regulators: TF target sets and drug signatures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

__all__ = ["rank_regulators"]


def _program(designed: AnnData, program_key: str) -> pd.Series:
    if program_key not in designed.var.columns:
        raise KeyError(
            f"designed.var[{program_key!r}] does not exist (var columns: {list(designed.var.columns)[:10]}); pass "
            "the output of ScoreDiffusion.design, or an AnnData with a per-gene program score in var."
        )
    prog = pd.Series(
        np.asarray(designed.var[program_key], dtype=np.float64), index=designed.var_names.astype(str)
    )
    if not np.isfinite(prog.to_numpy()).all():
        raise ValueError(f"designed.var[{program_key!r}] has NaN or inf values.")
    return prog


def _tf_sets(tf_targets: Mapping[str, Sequence[str]] | pd.DataFrame) -> dict[str, list[str]]:
    if isinstance(tf_targets, pd.DataFrame):
        cols = {c.lower(): c for c in tf_targets.columns}
        tf_col = cols.get("tf") or cols.get("source")
        tg_col = cols.get("target") or cols.get("gene")
        if tf_col is None or tg_col is None:
            raise KeyError(
                f"tf_targets needs columns 'tf' (or 'source') and 'target' (or 'gene'); got {list(tf_targets.columns)}."
            )
        return {str(k): list(map(str, v)) for k, v in tf_targets.groupby(tf_col, sort=True)[tg_col]}
    return {str(k): list(map(str, v)) for k, v in tf_targets.items()}


def _bh(p: np.ndarray) -> np.ndarray:
    n = len(p)
    if n == 0:
        return p
    order = np.argsort(p)
    q = p[order] * n / np.arange(1, n + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(q, 1.0)
    return out


def _rank_tfs(prog: pd.Series, sets: dict[str, list[str]], min_targets: int) -> pd.DataFrame:
    from scipy.stats import mannwhitneyu

    values = prog.to_numpy()
    z_all = (values - values.mean()) / (values.std() or 1.0)
    rows = []
    for tf, targets in sets.items():
        mask = prog.index.isin(set(targets))
        n = int(mask.sum())
        if n < min_targets or n == len(prog):
            continue
        score = float(z_all[mask].mean() * np.sqrt(n))  # z of the mean target score under random sets
        p = float(mannwhitneyu(values[mask], values[~mask], alternative="two-sided").pvalue)
        rows.append({"tf": tf, "n_targets": n, "score": score, "mean_target_change": float(values[mask].mean()),
                     "pvalue": p})  # fmt: skip
    df = pd.DataFrame(rows, columns=["tf", "n_targets", "score", "mean_target_change", "pvalue"])
    df["fdr"] = _bh(df["pvalue"].to_numpy(dtype=np.float64))
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _drug_scores(drug_signatures: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-drug gene scores in [-1, 1] from a long ranked table (drug, gene, rank) or a wide drugs × genes table."""
    cols = {c.lower(): c for c in drug_signatures.columns}
    if {"drug", "gene", "rank"} <= set(cols):
        out = {}
        for drug, g in drug_signatures.groupby(cols["drug"], sort=True):
            ranks = g[cols["rank"]].to_numpy(dtype=np.float64)
            n = max(len(g) - 1, 1)
            # rank 0 = most up-regulated, last = most down-regulated (the shared ranked-DEG tables)
            score = 1.0 - 2.0 * (ranks - ranks.min()) / n
            out[str(drug)] = (
                pd.Series(score, index=g[cols["gene"]].astype(str).to_numpy()).groupby(level=0).mean()
            )
        return out
    if drug_signatures.select_dtypes("number").shape[1] == drug_signatures.shape[1]:
        return {str(d): row.astype(np.float64) for d, row in drug_signatures.iterrows()}
    raise KeyError(
        "drug_signatures must be a long table with columns drug, gene, rank (rank 0 = most up) or a wide "
        f"numeric table (drugs × genes); got columns {list(drug_signatures.columns)[:10]}."
    )


def _rank_drugs(
    prog: pd.Series, drug_signatures: pd.DataFrame, *, min_genes: int, n_top: int
) -> pd.DataFrame:
    from scipy.stats import spearmanr

    up = set(prog.nlargest(n_top).index)
    down = set(prog.nsmallest(n_top).index)
    rows = []
    for drug, sig in _drug_scores(drug_signatures).items():
        shared = prog.index.intersection(sig.index)
        if len(shared) < min_genes:
            continue
        rho = float(spearmanr(prog[shared], sig[shared]).statistic)
        s = sig[shared]
        conn = float(s[s.index.isin(up)].mean() - s[s.index.isin(down)].mean()) / 2.0
        rows.append({"drug": drug, "n_genes": len(shared), "spearman": rho,
                     "connectivity": conn if np.isfinite(conn) else np.nan})  # fmt: skip
    df = pd.DataFrame(rows, columns=["drug", "n_genes", "spearman", "connectivity"])
    return df.sort_values("spearman", ascending=False, kind="stable").reset_index(drop=True)


def rank_regulators(
    designed: AnnData,
    *,
    tf_targets: Mapping[str, Sequence[str]] | pd.DataFrame | None = None,
    drug_signatures: pd.DataFrame | None = None,
    program_key: str = "design_logfc",
    key_added: str = "rank_regulators",
    min_targets: int = 5,
    min_genes: int = 50,
    n_top: int = 100,
) -> None:
    """Rank transcription factors and drugs that could produce a designed expression program.

    The program is a per-gene score in ``designed.var[program_key]`` — by default the shift of designed cells
    from their reference written by :meth:`~scpredict.models.ScoreDiffusion.design`. Inputs are user tables;
    nothing is downloaded.

    - TFs: enrichment of each TF's targets in the program: ``score`` = mean standardised program score of the
      targets × sqrt(n_targets) (a z-score under random gene sets; > 0: targets go up, the TF would be
      activated), with a two-sided Mann–Whitney p-value of targets vs other genes and a Benjamini–Hochberg FDR.
    - Drugs: Spearman correlation of the program with each drug's signature over shared genes (ranked
      signatures are scored linearly from +1 for rank 0 to −1 for the last rank), and a connectivity score
      (mean signature score of the program's ``n_top`` up genes minus that of its ``n_top`` down genes, / 2;
      in the spirit of the CMap connectivity score, Lamb et al. 2006).

    Parameters
    ----------
    designed
        AnnData with a per-gene program score in ``var[program_key]`` (genes in ``var_names``).
    tf_targets
        TF → target genes: a mapping, or a long DataFrame with columns ``tf``/``source`` and
        ``target``/``gene`` (e.g. a SCENIC+ or DoRothEA export).
    drug_signatures
        Long table with columns ``drug``, ``gene``, ``rank`` (rank 0 = most up, as in
        ``../shared/data/*_ranked_degs.parquet``) or a wide numeric drugs × genes table of signed scores.
    program_key
        ``var`` column holding the program.
    key_added
        ``uns`` key written.
    min_targets
        TFs with fewer targets among the genes are skipped.
    min_genes
        Drugs sharing fewer genes with the program are skipped.
    n_top
        Genes at each end of the program used by the connectivity score.

    Returns
    -------
    ``None``; writes ``designed.uns[key_added]``: ``{"tfs": DataFrame(tf, n_targets, score,
    mean_target_change, pvalue, fdr) sorted by score, "drugs": DataFrame(drug, n_genes, spearman,
    connectivity) sorted by spearman, "params": {...}}`` (a table is empty when its input was not given).
    """
    if tf_targets is None and drug_signatures is None:
        raise ValueError("pass tf_targets and/or drug_signatures (user tables; nothing is downloaded).")
    prog = _program(designed, program_key)
    tfs = (
        _rank_tfs(prog, _tf_sets(tf_targets), min_targets)
        if tf_targets is not None
        else pd.DataFrame(columns=["tf", "n_targets", "score", "mean_target_change", "pvalue", "fdr"])
    )
    drugs = (
        _rank_drugs(prog, drug_signatures, min_genes=min_genes, n_top=n_top)
        if drug_signatures is not None
        else pd.DataFrame(columns=["drug", "n_genes", "spearman", "connectivity"])
    )
    designed.uns[key_added] = {
        "tfs": tfs,
        "drugs": drugs,
        "params": {
            "program_key": program_key,
            "min_targets": min_targets,
            "min_genes": min_genes,
            "n_top": n_top,
        },
    }
