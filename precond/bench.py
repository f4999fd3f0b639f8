"""Benchmark: PCG iterations and solve time of every solver on the simulator's own systems.

    python -m precond.bench [--sizes 1024 4096 8192 16384 65536] [--ratios 1 10 100 1000]
                            [--methods jacobi ic0 mgpcg ...] [--scene scenes/dambreak.yaml] [--frame 40]
                            [--repeats 3] [--out bench_out] [--device cpu] [--markdown PATH]

For every N and density ratio it runs the scene headless to `--frame` (through the command
line, as `precond` never imports the simulator), takes that frame's matrix, and solves it
with a fixed random right-hand side (seed 0; mean-free on a closed box) to a relative
residual of 1e-6. Every solver sees the same system; after one warm-up solve each, the solvers
take turns, one solve each per round for `--repeats` rounds, and times are the medians (setup,
i.e. factorisation or network inference, included): a slow spell of a shared machine falls on
all of them alike.
`/jacobi` and `/mgpcg` give each solve time as a fraction of those solvers' on the same system.
pyamg's smoothed-aggregation AMG is a CPU reference row. Writes `bench.csv` and
`convergence.png` (residual against iteration at one N and ratio) to `--out`, and with
`--markdown PATH` its tables in markdown for the README (iterations, solve times, HTP's time as a
fraction of jacobi's and mgpcg's, the ablation table below), the machine and the date at the top.

HTP ablations: when htp is among the methods and `--ablations DIR` (default assets/ablations;
`--no-ablations` skips it) holds *.pt checkpoints, every system is also solved with each of
them, with the shipped checkpoint and with the shipped network untrained (torch seed 0; its
last layers start at zero, so it is the analytic preconditioner). A table of PCG iterations
(rows: variant, its training loss and highways on/off; columns: N/ratio, plus the mean) is
printed at the end and written to `ablations.csv`.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .dumps import REPO, dump_scene, load_system
from .solver import METHODS, PreconditionerUnavailable, Solver
from .system import PoissonSystem

GRIDS = {1024: (32, 32), 4096: (64, 64), 8192: (128, 64), 16384: (128, 128), 65536: (256, 256),
         262144: (512, 512)}


def scene_system(scene: Path, grid: tuple[int, int], ratio: float, frame: int, cache: Path) -> PoissonSystem:
    """The matrix the simulator assembles at `frame` of `scene` on `grid` at `ratio`."""
    out = cache / f"{scene.stem}_{grid[0]}x{grid[1]}_r{ratio:g}"
    dumps = sorted(out.glob("*.npz")) or dump_scene(scene, out, frames=frame, grid=grid, ratio=ratio, every=frame)
    return load_system(dumps[-1])[0]


def random_rhs(system: PoissonSystem, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return system.project(torch.randn(system.n, dtype=torch.float64, generator=g).to(system.device))


def pcg_once(system: PoissonSystem, b: torch.Tensor, method: str, tol: float) -> Callable[[], dict]:
    """One timed solve with `method` per call (setup included); raises PreconditionerUnavailable."""
    solver = Solver(method, tol=tol, fallback=None)

    def once() -> dict:
        res = solver.solve(system, b)
        return dict(iterations=res.iterations, converged=res.converged, residual=res.residual,
                    setup_ms=res.setup_seconds * 1e3, solve_ms=res.seconds * 1e3, history=res.history)
    return once


def pyamg_once(system: PoissonSystem, b: torch.Tensor, tol: float) -> Callable[[], dict]:
    """One timed pyamg smoothed-aggregation solve (hierarchy set-up included) per call."""
    import pyamg
    a = system.to_csr()
    bn = b.cpu().numpy()

    def once() -> dict:
        np.random.seed(0)    # pyamg's spectral-radius estimate starts from a random vector
        t0 = time.perf_counter()
        ml = pyamg.smoothed_aggregation_solver(a)
        t1 = time.perf_counter()
        hist: list[float] = []
        x = ml.solve(bn, tol=tol, accel="cg", residuals=hist, maxiter=500)
        t2 = time.perf_counter()
        rel = np.linalg.norm(bn - a @ x) / np.linalg.norm(bn)
        return dict(iterations=len(hist) - 1, converged=bool(rel <= 2 * tol), residual=float(rel),
                    setup_ms=(t1 - t0) * 1e3, solve_ms=(t2 - t0) * 1e3, history=[h / hist[0] for h in hist])
    return once


def interleaved(runs: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Every method solves once per round, `repeats` rounds, so a slow spell of the machine falls on
    all of them alike; the last solve's figures with the median set-up and solve times."""
    done: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, once in runs.items():
            done[name].append(once())
    return {name: {**rs[-1], "setup_ms": statistics.median(r["setup_ms"] for r in rs),
                   "solve_ms": statistics.median(r["solve_ms"] for r in rs)} for name, rs in done.items()}


def ablation_preconditioners(folder: Path) -> dict:
    """name -> HTP preconditioner: the shipped checkpoint, the same network untrained (the analytic
    preconditioner) and every checkpoint in `folder`; one that cannot be used is said and skipped."""
    from .htp import DEFAULT_CHECKPOINT, HTP, HTPConfig, HTPModel

    out = {}
    for name, path in {"shipped": DEFAULT_CHECKPOINT, **{p.stem: p for p in sorted(folder.glob("*.pt"))}}.items():
        try:
            out[name] = HTP(path)
        except PreconditionerUnavailable as err:
            print(f"ablation {name}: unavailable: {err}")
    torch.manual_seed(0)
    untrained = HTPModel(out["shipped"].model.cfg if "shipped" in out else HTPConfig()).eval()
    return {"analytic (untrained)": HTP.from_model(untrained, {"config": {"loss": {"kind": "none"}}}), **out}


def ablation_table(precs: dict, its: dict[str, dict[str, tuple[int, bool]]], tol: float, path: Path) -> list[dict]:
    """Print the iterations of every variant (rows) on every system (columns, "N/ratio"), write them as csv
    and return the rows."""
    cols = list(next(iter(its.values())))
    width = max(map(len, precs))
    print(f"\nHTP ablations: PCG iterations to {tol:g} (* = not converged)")
    print(f"{'variant':<{width}} {'loss':>7} {'highways':>8} " + " ".join(f"{c:>10}" for c in cols) + f" {'mean':>7}")
    rows = []
    for name, prec in precs.items():
        cells = its[name]
        row = {"variant": name, "loss": prec.record.get("config", {}).get("loss", {}).get("kind", "?"),
               "highways": "on" if prec.model.cfg.highways else "off", **{c: cells[c][0] for c in cols},
               "mean": round(statistics.mean(i for i, _ in cells.values()), 2),
               "converged": all(ok for _, ok in cells.values())}
        marked = " ".join(f"{str(i) + ('' if ok else '*'):>10}" for i, ok in cells.values())
        print(f"{name:<{width}} {row['loss']:>7} {row['highways']:>8} {marked} {row['mean']:>7.1f}")
        rows.append(row)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def machine(device: str) -> str:
    """The CPU model, its core count, torch's version and threads, and a CUDA device if used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(torch.device(device))}" if torch.device(device).type == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return [line(header), line(["---"] * len(header)), *map(line, body)]


def markdown(rows: list[dict], ablations: list[dict], ablation_its: dict[str, dict[str, tuple[int, bool]]],
             ratios: list[float], intro: str, device: str) -> str:
    """The benchmark's tables in markdown: one row per N, each cell one value per density ratio."""
    sizes = sorted({r["n"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    at = {(r["n"], r["ratio"], r["method"]): r for r in rows}
    per_ratio = "ratio " + " / ".join(f"{x:,g}" for x in ratios)
    label = lambda n: f"{n:,} ({GRIDS[n][0]}x{GRIDS[n][1]})"

    def per_ratio_cell(value: Callable[..., str], *key) -> str:
        return " / ".join(value(*key, x) for x in ratios)

    def iterations(n: int, method: str, x: float) -> str:
        r = at.get((n, x, method))
        return "-" if r is None else f"{r['iterations']:,}" + ("" if r["converged"] else "*")

    def ms(n: int, method: str, x: float) -> str:
        r = at.get((n, x, method))
        return "-" if r is None else f"{r['solve_ms']:,.0f}" if r["solve_ms"] >= 100 else f"{r['solve_ms']:.1f}"

    def htp_over(n: int, ref: str, x: float) -> str:
        htp, other = at.get((n, x, "htp")), at.get((n, x, ref))
        return "-" if htp is None or other is None else f"{htp['solve_ms'] / other['solve_ms']:.2f}"

    def variant(name: str, n: int, x: float) -> str:
        its, ok = ablation_its[name].get(f"{n}/{x:g}", (None, True))
        return "-" if its is None else f"{its}" + ("" if ok else "*")

    out = [f"Machine: {machine(device)}; {datetime.date.today().isoformat()}.", "", intro, "",
           f"PCG iterations, {per_ratio} (* = not converged):", "",
           *_table(["N", *methods], [[label(n), *(per_ratio_cell(iterations, n, m) for m in methods)] for n in sizes]),
           "", f"Solve time in ms, setup included, {per_ratio}:", "",
           *_table(["N", *methods], [[label(n), *(per_ratio_cell(ms, n, m) for m in methods)] for n in sizes])]
    refs = [ref for ref in ("jacobi", "mgpcg") if ref in methods]
    if "htp" in methods and refs:
        whose = " and ".join(f"{ref}'s" for ref in refs)
        out += ["", f"HTP's solve time as a fraction of {whose} (setup included), {per_ratio}:", "",
                *_table(["N", *(f"htp / {ref}" for ref in refs)],
                        [[label(n), *(per_ratio_cell(htp_over, n, ref) for ref in refs)] for n in sizes])]
    if ablations:
        out += ["", f"HTP variants, PCG iterations, {per_ratio} (* = not converged; mean over all systems):", "",
                *_table(["variant", "loss", "highways", *(f"{n:,}" for n in sizes), "mean"],
                        [[a["variant"], a["loss"], a["highways"],
                          *(per_ratio_cell(variant, a["variant"], n) for n in sizes), f"{a['mean']:.1f}"]
                         for a in ablations])]
    return "\n".join(out) + "\n"


def plot(histories: dict[str, list[float]], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, h in histories.items():
        ax.semilogy(range(len(h)), h, label=f"{name} ({len(h) - 1} it)")
    ax.set_xlabel("PCG iteration")
    ax.set_ylabel("relative residual")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m precond.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192, 16384, 65536], choices=sorted(GRIDS))
    p.add_argument("--ratios", type=float, nargs="+", default=[1, 10, 100, 1000])
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "none"], choices=METHODS)
    p.add_argument("--no-pyamg", action="store_true", help="skip the pyamg reference row")
    p.add_argument("--scene", type=Path, default=REPO / "scenes" / "dambreak.yaml")
    p.add_argument("--frame", type=int, default=40, help="simulator frame whose system is solved")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--cache", type=Path, help="keep the simulator's dumps here (default: a temporary folder)")
    p.add_argument("--plot-at", type=float, nargs=2, default=(8192, 100), metavar=("N", "RATIO"))
    p.add_argument("--ablations", type=Path, default=REPO / "assets" / "ablations",
                   help="folder of HTP ablation checkpoints (*.pt) compared when htp is among the methods")
    p.add_argument("--no-ablations", action="store_true", help="skip the HTP ablation table")
    p.add_argument("--markdown", type=Path, metavar="PATH",
                   help="also write the tables as markdown (README-ready; machine and date at the top)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    rows, histories = [], {}
    header = (f"{'N':>7} {'grid':>9} {'ratio':>6} {'method':>12} {'iters':>6} {'conv':>5} {'setup ms':>9} "
              f"{'solve ms':>9} {'/jacobi':>8} {'/mgpcg':>8}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        ablations = (ablation_preconditioners(args.ablations) if not args.no_ablations
                     and "htp" in args.methods and any(args.ablations.glob("*.pt")) else {})
        ablation_its: dict[str, dict[str, tuple[int, bool]]] = {name: {} for name in ablations}
        for n in args.sizes:
            grid = GRIDS[n]
            for ratio in args.ratios:
                system = scene_system(args.scene, grid, ratio, args.frame, cache).to(device=args.device)
                b = random_rhs(system)
                runs = {method: pcg_once(system, b, method, args.tol) for method in args.methods}
                if not args.no_pyamg:
                    runs["pyamg-sa"] = pyamg_once(system, b, args.tol)
                for method in list(runs):
                    try:
                        runs[method]()                                # warm-up: caches, checkpoint load
                    except PreconditionerUnavailable as err:
                        print(f"{n:>7} {grid[0]}x{grid[1]:<5} {ratio:>6g} {method:>12}  unavailable: {err}")
                        del runs[method]
                results = interleaved(runs, args.repeats)
                for method, r in results.items():
                    # solve time as a fraction of the reference's, measured side by side on this system
                    frac = [r["solve_ms"] / results[ref]["solve_ms"] if ref in results else float("nan")
                            for ref in ("jacobi", "mgpcg")]
                    print(f"{n:>7} {grid[0]:>4}x{grid[1]:<4} {ratio:>6g} {method:>12} {r['iterations']:>6} "
                          f"{str(r['converged']):>5} {r['setup_ms']:>9.2f} {r['solve_ms']:>9.2f} "
                          f"{frac[0]:>8.2f} {frac[1]:>8.2f}", flush=True)
                    rows.append(dict(scene=args.scene.stem, n=n, nx=grid[0], ny=grid[1], ratio=ratio, method=method,
                                     **{k: v for k, v in r.items() if k != "history"}))
                for name, prec in ablations.items():
                    res = Solver("htp", tol=args.tol, fallback=None, precond=prec).solve(system, b)
                    ablation_its[name][f"{n}/{ratio:g}"] = (res.iterations, res.converged)
                if (n, ratio) == tuple(args.plot_at):
                    histories = {m: r["history"] for m, r in results.items()}
    with open(args.out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if histories:
        n, ratio = args.plot_at
        plot(histories, f"{args.scene.stem}, N={int(n)}, ratio {ratio:g}", args.out / "convergence.png")
    ablation_rows = ablation_table(ablations, ablation_its, args.tol, args.out / "ablations.csv") if ablations else []
    if args.markdown:
        command = " ".join(["python -m precond.bench", *(argv if argv is not None else sys.argv[1:])])
        intro = (f"`{command}`: {args.scene.stem} frame {args.frame}, random right-hand side (seed 0), relative "
                 f"residual {args.tol:g}; after a warm-up solve the solvers take turns, one solve each per round, "
                 f"{args.repeats} round{'s' if args.repeats > 1 else ''}, medians.")
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, ablation_rows, ablation_its, args.ratios, intro, args.device))
    print(f"wrote {args.out / 'bench.csv'}" + (f" and {args.out / 'convergence.png'}" if histories else "")
          + (f" and {args.out / 'ablations.csv'}" if ablations else "")
          + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
