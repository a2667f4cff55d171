"""Demo step: drug screen imbalance, ΔExpression, drug retrieval (connectivity vs DrugResponseTransformer)."""

from __future__ import annotations

from pathlib import Path

ORDER = 80


def run(out_dir: Path, report: dict) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    import scpredict as sp
    from scpredict.pp._drugs import _synthetic_drug_screen

    screen = _synthetic_drug_screen(n_genes=40, cells_per_condition=6, n_controls=12, seed=0)
    # make the screen long-tailed like Tahoe-100M: drug i keeps a fraction of its cells, controls all
    rng = np.random.default_rng(0)
    drug_names = sorted(set(screen.obs["drug"].astype(str)) - {"DMSO_TF"})
    frac = dict(zip(drug_names, np.linspace(1.0, 0.35, len(drug_names)), strict=True))
    p_keep = screen.obs["drug"].astype(str).map(lambda d: frac.get(d, 1.0)).to_numpy()
    keep = rng.random(screen.n_obs) < p_keep
    keep |= ~screen.obs.duplicated(["drug", "cell_line", "dose"]).to_numpy()  # every condition keeps a cell
    screen = screen[keep].copy()
    sp.tl.imbalance(screen, drug_key="drug", cell_line_key="cell_line")
    ax = sp.pl.imbalance(screen, min_cells=4)
    ax.figure.savefig(out_dir / "drug_imbalance.png", dpi=110, bbox_inches="tight")
    plt.close(ax.figure)

    deltas = sp.pp.drug_deltas(screen, drug_key="drug", cell_line_key="cell_line", dose_key="dose")
    high = deltas[deltas.obs["dose"] == deltas.obs["dose"].max()]
    low = deltas[deltas.obs["dose"] == deltas.obs["dose"].min()]
    drugs = np.array(sorted(high.obs["drug"].astype(str).unique()))

    # inverse task: each high-dose Δ is a query; low-dose Δ of the same line are the database
    truth, conn = [], []
    for line in ("line0", "line1"):
        q = high[high.obs["cell_line"] == line]
        db = low[low.obs["cell_line"] == line]
        db_names = db.obs["drug"].astype(str).to_numpy()
        s = sp.tl.connectivity(q, db, n_genes=10).to_numpy()
        conn.append(s[:, [int(np.nonzero(db_names == d)[0][0]) for d in drugs]])
        truth.append((q.obs["drug"].astype(str).to_numpy()[:, None] == drugs[None]).astype(float))
    truth, conn = np.vstack(truth), np.vstack(conn)

    sp.models.DrugResponseTransformer.setup_anndata(
        screen, perturbation_key="drug", smiles_key="smiles", cell_line_key="cell_line", dose_key="dose"
    )
    model = sp.models.DrugResponseTransformer(
        screen, d_model=32, n_heads=2, n_layers=1, n_hidden=64, n_latent=32, n_bits=512
    )
    model.train(max_epochs=15, warmup_epochs=3, logger=None, enable_checkpointing=False, early_stopping=False)
    model_scores = []
    for line in ("line0", "line1"):
        q = high[high.obs["cell_line"] == line]
        model_scores.append(model.get_drug_scores(q, cell_line=line, method="combined")[drugs].to_numpy())
    model_scores = np.vstack(model_scores)

    metrics = {}
    for name, s in (("connectivity", conn), ("DrugResponseTransformer", model_scores)):
        metrics[name] = {
            "MRR": sp.metrics.mrr(truth, s),
            "NDCG@5": sp.metrics.ndcg_at_k(truth, s, k=5),
            "P@1": sp.metrics.precision_at_k(truth, s, k=1),
        }
    report["retrieval"] = metrics
    report["imbalance"] = dict(screen.uns["imbalance"]["summary"])
    report["rank_drugs_example"] = model.rank_drugs(
        high[high.obs["cell_line"] == "line0"][:1], cell_line="line0", k=3
    ).to_dict("records")

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    names = list(metrics)
    x = np.arange(3)
    for i, n in enumerate(names):
        ax.bar(x + 0.38 * i, list(metrics[n].values()), width=0.36, label=n)
    ax.set_xticks(x + 0.19, list(metrics[names[0]]))
    ax.set_ylim(0, 1)
    ax.set_title("Drug retrieval: high-dose query vs low-dose database")
    ax.legend(frameon=False, fontsize="small")
    fig.savefig(out_dir / "drug_retrieval.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
