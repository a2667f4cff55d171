"""Forward+backward time and peak memory of one BiMamba layer vs one Transformer layer as the gene count grows.

One layer each, width ``d_model = 64``, a batch of 4 conditions (sequences of ``G + 1`` tokens: ``[COND]`` plus
``G`` genes), training mode. Each (layer, G) runs in a fresh subprocess; peak memory is the growth of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over its resident set before
the step, so it counts every allocation of the step (activations saved for backward, gradients, workspace).

Layers:

- ``bimamba-ssd``: :class:`scpredict.nn.BiMambaBlock` with ``ssm="mamba2"`` (chunked SSD scan), the default
  backbone of :class:`scpredict.models.BiMambaPredictor`;
- ``bimamba-scan``: the same block with ``ssm="mamba1"`` (sequential selective scan, custom autograd);
- ``transformer``: ``torch.nn.TransformerEncoderLayer(64, 4 heads, 256 feed-forward, dropout 0.1)``, the layer
  of :class:`scpredict.models.TransformerPredictor`; with dropout PyTorch's CPU attention materialises the
  (L x L) matrix;
- ``transformer-flash``: the same layer with dropout 0, where PyTorch uses its fused (flash) CPU attention kernel
  (memory O(L), time still O(L^2)).

Usage::

    python benchmarks/bimamba_scaling.py            # full table into docs/benchmarks.md
    python benchmarks/bimamba_scaling.py --genes 1024 2048 --layers bimamba-ssd --no-write
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time

LAYERS = ("bimamba-ssd", "bimamba-scan", "transformer", "transformer-flash")
D_MODEL, N_COND = 64, 4


def _status(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # MiB
    raise KeyError(key)


def _build(layer: str):
    import torch

    from scpredict.nn import BiMambaBlock

    if layer == "bimamba-ssd":
        return BiMambaBlock(D_MODEL, ssm="mamba2", d_state=16, headdim=16, chunk_size=32)
    if layer == "bimamba-scan":
        return BiMambaBlock(D_MODEL, ssm="mamba1", d_state=16)
    dropout = 0.1 if layer == "transformer" else 0.0
    return torch.nn.TransformerEncoderLayer(
        D_MODEL, 4, 4 * D_MODEL, dropout=dropout, batch_first=True, norm_first=True
    )


def worker(layer: str, genes: int, repeats: int) -> dict:
    """Measure one (layer, G) in this process."""
    import torch

    torch.manual_seed(0)
    net = _build(layer).train()
    warm = torch.randn(N_COND, 257, D_MODEL, requires_grad=True)
    net(warm).square().mean().backward()  # warm-up on a short sequence (allocator, kernels)
    x = torch.randn(N_COND, genes + 1, D_MODEL, requires_grad=True)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak resident set
    base = _status("VmRSS:")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x).square().mean().backward()
        times.append(time.perf_counter() - t0)
        net.zero_grad(set_to_none=True)
        x.grad = None
    peak = _status("VmHWM:") - base
    return {"layer": layer, "genes": genes, "seconds": min(times), "peak_mib": peak, "repeats": repeats}


def run_one(layer: str, genes: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", layer, str(genes), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"layer": layer, "genes": genes, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--max-gib", type=float, default=8.0, help="skip runs whose extrapolated memory exceeds"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=400.0, help="skip runs whose extrapolated time exceeds"
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("LAYER", "GENES"))
    parser.add_argument("--from-log", help="re-write the report from the JSON lines of an earlier run")
    args = parser.parse_args()
    if args.from_log:
        with open(args.from_log) as fh:
            rows = [json.loads(line) for line in fh if line.startswith("{")]
        write_report(rows, args)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats)))
        return
    results: list[dict] = [{"load_start": _loadavg()}]
    print(json.dumps(results[0]), flush=True)
    for layer in args.layers:
        prev = None
        for genes in sorted(args.genes):
            power = 1 if layer.startswith("bimamba") else 2
            if prev is not None and "error" not in prev:
                f = (genes / prev["genes"]) ** power
                est_mem, est_t = (
                    prev["peak_mib"] * f / 1024,
                    prev["seconds"] * (genes / prev["genes"]) ** power,
                )
                if est_mem > args.max_gib or est_t * args.repeats > args.max_seconds:
                    res = {
                        "layer": layer,
                        "genes": genes,
                        "skipped": f"est. {est_mem:.1f} GiB, {est_t:.0f} s",
                    }
                    print(json.dumps(res), flush=True)
                    results.append(res)
                    continue
            res = run_one(layer, genes, args.repeats)
            print(json.dumps(res), flush=True)
            results.append(res)
            prev = res if "error" not in res else prev
    results.append({"load_end": _loadavg()})
    print(json.dumps(results[-1]), flush=True)
    if not args.no_write:
        write_report(results, args)


def _crossover(by: dict, genes: list[int]) -> str:
    """Where the SSD layer's time first drops below flash attention's, in words."""
    for g in genes:
        m, f = by.get(("bimamba-ssd", g), {}), by.get(("transformer-flash", g), {})
        if "seconds" in m and "seconds" in f and m["seconds"] < f["seconds"]:
            return f"from G = {g} on (the SSD layer: {f['seconds'] / m['seconds']:.1f}x faster there)"
    return "at none of the sizes measured"


def _loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


def write_report(results: list[dict], args) -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _report import machine, write_section

    loads = {k: r[k] for r in results for k in ("load_start", "load_end") if k in r}
    results = [r for r in results if "layer" in r]
    by = {(r["layer"], r["genes"]): r for r in results}
    genes = sorted({r["genes"] for r in results})
    lines = [
        "## BiMamba vs Transformer: one layer, forward + backward",
        "",
        "Command: `OMP_NUM_THREADS=1 flock /tmp/scp_timing.lock python benchmarks/bimamba_scaling.py"
        + (f" --max-gib {args.max_gib:g}" if args.max_gib != 8.0 else "")
        + "`. Machine: "
        f"{machine()} (2-core CPU, no GPU, one thread, shared with other jobs, so absolute times are noisy; load "
        f"average (1, 5, 15 min) {loads.get('load_start', '?')} at the start and {loads.get('load_end', '?')} at "
        "the end; every cell is one fresh process). One layer, d_model 64, "
        f"{N_COND} conditions per batch, sequence length G + 1; time = best of {args.repeats} steps at every size "
        "(after a warm-up step on 256 tokens; a single step at a new size also pays first-touch page faults of "
        "its buffers); memory = growth of the peak resident set during the steps. The Mamba-2 (SSD) "
        "layer runs sequences longer than 2,048 tokens in equal segments (state carried across; same result, "
        "cache-sized working set).",
        "",
        "| layer | " + " | ".join(f"G={g}" for g in genes) + " |",
        "|---|" + "---|" * len(genes),
    ]
    for layer in args.layers:
        cells = []
        for g in genes:
            r = by.get((layer, g))
            if r is None:
                cells.append("-")
            elif "skipped" in r:
                cells.append(f"not run ({r['skipped']})")
            elif "error" in r:
                cells.append(f"failed: {r['error']}")
            else:
                cells.append(f"{r['seconds']:.2f} s / {r['peak_mib']:.0f} MiB")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reading: the BiMamba layers grow linearly in memory and about linearly in time; the Transformer layer "
        "with dropout (PyTorch's CPU path materialises the L x L attention) grows quadratically and is not run "
        f"where its extrapolated memory exceeds {args.max_gib:g} GiB (this 24 GB machine is shared). PyTorch's "
        "fused flash-attention CPU kernel (dropout 0) keeps memory O(L) with time still O(L²); the BiMamba layer "
        "stores more activations per token (inner width 2 x d_model, chunk states), so it uses more memory than "
        "flash attention at every size, while its linear time overtakes flash attention's quadratic time "
        f"{_crossover(by, genes)}.",
        "",
        "Targets:",
        "",
    ]

    def ok(layer, g):
        r = by.get((layer, g))
        return r if r is not None and "seconds" in r else None

    for layer in ("bimamba-ssd", "bimamba-scan"):
        a, b = ok(layer, 2048), ok(layer, 16384)
        if a and b:
            rt, rm = b["seconds"] / a["seconds"], b["peak_mib"] / max(a["peak_mib"], 1e-9)
            lines.append(
                f"- {layer}: t(16k)/t(2k) = {rt:.1f} ({'met' if rt <= 9.6 else 'MISSED'}, target <= 9.6); "
                f"memory(16k)/memory(2k) = {rm:.1f} ({'met' if rm <= 9.6 else 'MISSED'})."
            )
        for tr in ("transformer", "transformer-flash"):
            m, t = ok(layer, 8192), ok(tr, 8192)
            if m and t:
                sp_, mem = t["seconds"] / m["seconds"], t["peak_mib"] / max(m["peak_mib"], 1e-9)
                lines.append(
                    f"- {layer} vs {tr} at 8k: {sp_:.1f}x faster ({'met' if sp_ >= 5 else 'MISSED'}, target >= 5x), "
                    f"{mem:.1f}x less memory ({'met' if mem >= 10 else 'MISSED'}, target >= 10x)."
                )
            elif m:
                common = [g for g in genes if ok(layer, g) and ok(tr, g)]
                if common:
                    g = max(common)
                    sp_ = ok(tr, g)["seconds"] / ok(layer, g)["seconds"]
                    mem = ok(tr, g)["peak_mib"] / max(ok(layer, g)["peak_mib"], 1e-9)
                    line = (
                        f"- {layer} vs {tr} at 8k: not measured (the Transformer layer was not run at 8k, see "
                        f"table); at G={g}, the largest size both ran: {sp_:.1f}x faster, {mem:.1f}x less memory"
                    )
                    est = re.match(
                        r"est\. ([\d.]+) GiB, ([\d.]+) s", by.get((tr, 8192), {}).get("skipped", "")
                    )
                    if est:
                        e_mem, e_t = float(est.group(1)) * 1024, float(est.group(2))
                        line += (
                            f"; with the Transformer's 8k cost extrapolated quadratically from G={g} "
                            f"({e_t:.0f} s, {e_mem / 1024:.1f} GiB): {e_t / m['seconds']:.1f}x faster, "
                            f"{e_mem / max(m['peak_mib'], 1e-9):.1f}x less memory (estimate, not a measurement)"
                        )
                    lines.append(line + ".")
    write_section("bimamba_scaling", "\n".join(lines))


if __name__ == "__main__":
    main()
