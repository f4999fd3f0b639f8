"""Benchmark: PCG iterations and solve time of every solver on the simulator's own systems.

    python -m precond.bench [--sizes 1024 4096 8192 16384 65536] [--ratios 1 10 100 1000]
                            [--methods jacobi ic0 mgpcg ...] [--compiled jacobi htp] [--threads 1]
                            [--scene scenes/dambreak.yaml ...] [--synthetic obstacles] [--frame 40]
                            [--repeats 3] [--out bench_out] [--device cpu] [--markdown PATH]
                            [--sequence-at 8192 100]

For every scene, N and density ratio it runs the scene headless to `--frame` (through the command
line, as `precond` never imports the simulator), takes that frame's matrix, and solves it
with a fixed random right-hand side (seed 0; zero on solid cells, mean-free on every closed
region) to a relative residual of 1e-6. `--synthetic KIND ...` takes precond.synthetic's
obstacle systems instead of scenes (`obstacles`: all of box, steps, funnel and porous, the last
a held-out family of many small random obstacles), no simulator needed:

    python -m precond.bench --synthetic obstacles --sizes 8192 65536 --ratios 1 1000 \
        --methods jacobi ic0 mgpcg htp --compiled htp --no-pyamg --no-ablations --sequence 0

gives the README's table of HTP against mgpcg on obstacle systems. With several scenes or
kinds, every table has a row per scene (or kind) and N; the set-up reuse table below needs a
scene (the first). Every solver sees the same system; after one warm-up solve each, the solvers
take turns, one solve each per round for `--repeats` rounds, and times are the medians (setup,
i.e. factorisation or network inference, included): a slow spell of a shared machine falls on
all of them alike.
`/jacobi` and `/mgpcg` give each solve time as a fraction of those solvers' on the same system.
Every method of `--compiled` also runs as "<method> compiled": PCG in torch.compile'd chunks (see
precond.compiled; its compile happens in the warm-up solve and is not timed); the table of HTP
against the classical solvers takes the faster of eager and compiled on both sides. HTP runs its
network for every solve here (no set-up reuse: every system is new to it). Solves run with the
one intra-op thread (the Solver's "auto" policy picks by the machine's load, which would make
runs incomparable) unless `--threads` says otherwise.
pyamg's smoothed-aggregation AMG is a CPU reference row.

Set-up reuse: at `--sequence-at N RATIO`, the systems of `--sequence` consecutive frames of the
scene are solved in order (their own right-hand sides) by HTP with a fresh network pass for every
system and by HTP keeping its network's output (htp.NetworkReuse, the default in the simulator):
mean iterations, set-up and total ms per solve. Writes `bench.csv` and
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
from .pcg import Preconditioner
from .solver import METHODS, PreconditionerUnavailable, Solver
from .synthetic import OBSTACLES
from .system import PoissonSystem

THREADS = 1   # solve threads, fixed so that runs compare
GRIDS = {1024: (32, 32), 4096: (64, 64), 8192: (128, 64), 16384: (128, 128), 65536: (256, 256),
         262144: (512, 512)}


def scene_system(scene: Path, grid: tuple[int, int], ratio: float, frame: int, cache: Path) -> PoissonSystem:
    """The matrix the simulator assembles at `frame` of `scene` on `grid` at `ratio`."""
    out = cache / f"{scene.stem}_{grid[0]}x{grid[1]}_r{ratio:g}"
    dumps = sorted(out.glob("*.npz")) or dump_scene(scene, out, frames=frame, grid=grid, ratio=ratio, every=frame)
    return load_system(dumps[-1])[0]


def random_rhs(system: PoissonSystem, seed: int = 0) -> torch.Tensor:
    """Gaussian, zero on decoupled (solid) cells as the simulator's divergence is, and consistent."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(system.n, dtype=torch.float64, generator=g).to(system.device)
    return system.project(b * ~system.decoupled.reshape(-1))


def column(case: str, n: int, cases: list[str]) -> str:
    """Where a system's figures go in the tables: its N, after its case's name when there are several."""
    return f"{n}" if len(cases) == 1 else f"{case} {n}"


def fresh_htp(reuse: bool = False) -> "Preconditioner":
    """The shipped HTP, running its network for every system unless `reuse`."""
    from .htp import HTP
    from .htp.preconditioner import NetworkReuse
    return HTP(reuse=NetworkReuse() if reuse else None)


def pcg_once(system: PoissonSystem, b: torch.Tensor, method: str, tol: float, compiled: bool = False,
             threads: int | None = THREADS) -> Callable[[], dict]:
    """One timed solve with `method` per call (setup included); raises PreconditionerUnavailable."""
    solver = Solver(method, tol=tol, fallback=None, compiled=compiled, threads=threads,
                    precond=fresh_htp() if method == "htp" else None)

    def once() -> dict:
        res = solver.solve(system, b)
        pcg_ms = (res.seconds - res.setup_seconds) * 1e3
        return dict(iterations=res.iterations, converged=res.converged, residual=res.residual,
                    setup_ms=res.setup_seconds * 1e3, solve_ms=res.seconds * 1e3,
                    ms_per_it=pcg_ms / max(res.iterations, 1), mode="compiled" if res.compiled else "eager",
                    history=res.history)
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
                    setup_ms=(t1 - t0) * 1e3, solve_ms=(t2 - t0) * 1e3, ms_per_it=(t2 - t1) * 1e3 / max(len(hist) - 1, 1),
                    mode="scipy", history=[h / hist[0] for h in hist])
    return once


def run_system(system: PoissonSystem, args: argparse.Namespace, where: str) -> dict[str, dict]:
    """Every method of `args` (eager, compiled, pyamg) on one system, after a warm-up solve each, taking
    turns (see interleaved); prints a line per method after `where` (the system's columns)."""
    b = random_rhs(system)
    runs = {method: pcg_once(system, b, method, args.tol, threads=args.threads) for method in args.methods}
    runs.update({f"{method} compiled": pcg_once(system, b, method, args.tol, True, args.threads)
                 for method in args.methods if method in args.compiled})
    if not args.no_pyamg:
        runs["pyamg-sa"] = pyamg_once(system, b, args.tol)
    for method in list(runs):
        try:
            runs[method]()                                # warm-up: caches, checkpoint load
        except PreconditionerUnavailable as err:
            print(f"{where} {method:>16}  unavailable: {err}")
            del runs[method]
    results = interleaved(runs, args.repeats)
    for method, r in results.items():
        # solve time as a fraction of the reference's, measured side by side on this system
        frac = [r["solve_ms"] / results[ref]["solve_ms"] if ref in results else float("nan")
                for ref in ("jacobi", "mgpcg")]
        print(f"{where} {method:>16} {r['iterations']:>6} {str(r['converged']):>5} {r['setup_ms']:>9.2f} "
              f"{r['ms_per_it']:>7.3f} {r['solve_ms']:>9.2f} {frac[0]:>8.2f} {frac[1]:>8.2f} "
              f"{r.get('mode', 'eager'):>8}", flush=True)
    return results


def interleaved(runs: dict[str, Callable[[], dict]], repeats: int) -> dict[str, dict]:
    """Every method solves once per round, `repeats` rounds, so a slow spell of the machine falls on
    all of them alike; the last solve's figures with the median set-up and solve times."""
    done: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, once in runs.items():
            done[name].append(once())
    timed = ("setup_ms", "solve_ms", "ms_per_it")
    return {name: {**rs[-1], **{k: statistics.median(r[k] for r in rs) for k in timed if k in rs[-1]}}
            for name, rs in done.items()}


def sequence(scene: Path, grid: tuple[int, int], ratio: float, first: int, count: int, cache: Path, tol: float,
             threads: int | None) -> list[dict]:
    """HTP on `count` consecutive frames' systems from frame `first`: a network pass for every system
    against the kept network output (NetworkReuse); per variant the mean iterations and ms per solve."""
    out = cache / f"{scene.stem}_{grid[0]}x{grid[1]}_r{ratio:g}_sequence"
    dumps = sorted(out.glob("*.npz")) or dump_scene(scene, out, frames=first + count - 1, grid=grid, ratio=ratio)
    systems = [load_system(d)[:2] for d in dumps[-count:]]
    variants = {"htp, network every system": False, "htp, network output kept": True}
    for reuse in variants.values():                               # warm-up on the first system
        Solver("htp", tol=tol, fallback=None, threads=threads, precond=fresh_htp(reuse)).solve(*systems[0])
    solvers = {name: Solver("htp", tol=tol, fallback=None, threads=threads, precond=fresh_htp(reuse))
               for name, reuse in variants.items()}
    results: dict[str, list] = {name: [] for name in variants}
    for system, b in systems:                                     # the variants take turns on every system
        for name, solver in solvers.items():
            results[name].append(solver.solve(system, b))
    rows = []
    for name, res in results.items():
        rows.append(dict(variant=name, solves=len(res), network_runs=sum(not r.setup_reused for r in res),
                         iterations=statistics.mean(r.iterations for r in res),
                         setup_ms=statistics.mean(r.setup_seconds for r in res) * 1e3,
                         solve_ms=statistics.mean(r.seconds for r in res) * 1e3,
                         converged=all(r.converged for r in res)))
    return rows


def ablation_preconditioners(folder: Path) -> dict:
    """name -> HTP preconditioner: the shipped checkpoint, the same network untrained (the analytic
    preconditioner) and every checkpoint in `folder`; one that cannot be used is said and skipped."""
    from .htp import DEFAULT_CHECKPOINT, HTP, HTPConfig, HTPModel

    out = {}
    for name, path in {"shipped": DEFAULT_CHECKPOINT, **{p.stem: p for p in sorted(folder.glob("*.pt"))}}.items():
        try:
            out[name] = HTP(path, reuse=None)      # each system is new: the network runs for every one
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


def machine(device: str, threads: int | None = THREADS) -> str:
    """The CPU model, its core count, torch's version and the solves' threads, and a CUDA device if used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(torch.device(device))}" if torch.device(device).type == "cuda" else ""
    threads = torch.get_num_threads() if threads is None else threads
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} (solves on {threads} thread{'s' if threads > 1 else ''}){gpu}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    line = lambda cells: "| " + " | ".join(cells) + " |"
    return [line(header), line(["---"] * len(header)), *map(line, body)]


CLASSICAL = ("none", "jacobi", "ic0", "mgpcg")


def base_method(variant: str) -> str:
    """"htp compiled" -> "htp"."""
    return variant.split()[0]


def markdown(rows: list[dict], ablations: list[dict], ablation_its: dict[str, dict[str, tuple[int, bool]]],
             ratios: list[float], intro: str, device: str, sequence_rows: list[dict], sequence_label: str,
             threads: int | None = THREADS) -> str:
    """The benchmark's tables in markdown: one row per N (per scene and N with several scenes), each
    cell one value per density ratio."""
    cases = list(dict.fromkeys(r["scene"] for r in rows))
    sizes = sorted({(cases.index(r["scene"]), r["n"]) for r in rows})
    sizes = [(cases[c], n) for c, n in sizes]                   # (case, N): one table row each
    variants = list(dict.fromkeys(r["method"] for r in rows))
    eager = [v for v in variants if v == base_method(v)]
    at = {((r["scene"], r["n"]), r["ratio"], r["method"]): r for r in rows}
    per_ratio = "ratio " + " / ".join(f"{x:,g}" for x in ratios)
    named = lambda key: f"{key[0]}, " if len(cases) > 1 else ""
    label = lambda key: f"{named(key)}{key[1]:,} ({GRIDS[key[1]][0]}x{GRIDS[key[1]][1]})"
    first = "system, N" if len(cases) > 1 else "N"
    number = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"

    def per_ratio_cell(value: Callable[..., str], *key) -> str:
        return " / ".join(value(*key, x) for x in ratios)

    def iterations(n: tuple[str, int], method: str, x: float) -> str:
        r = at.get((n, x, method))
        return "-" if r is None else f"{r['iterations']:,}" + ("" if r["converged"] else "*")

    def field(name: str) -> Callable[..., str]:
        def cell(n: tuple[str, int], method: str, x: float) -> str:
            r = at.get((n, x, method))
            return "-" if r is None else number(r[name])
        return cell

    def fastest(n: tuple[str, int], x: float, pick: Callable[[str], bool]) -> dict | None:
        found = [at[(n, x, v)] for v in variants if pick(base_method(v)) and (n, x, v) in at and at[(n, x, v)]["converged"]]
        return min(found, key=lambda r: r["solve_ms"]) if found else None

    def htp_over_classical(n: tuple[str, int], x: float) -> str:
        htp, other = fastest(n, x, lambda m: m == "htp"), fastest(n, x, lambda m: m in CLASSICAL)
        if htp is None or other is None:
            return "-"
        return f"{htp['solve_ms'] / other['solve_ms']:.2f} ({other['method']})"

    def variant(name: str, n: tuple[str, int], x: float) -> str:
        its, ok = ablation_its[name].get(f"{column(*n, cases)}/{x:g}", (None, True))
        return "-" if its is None else f"{its}" + ("" if ok else "*")

    top = max(ratios)
    out = [f"Machine: {machine(device, threads)}; {datetime.date.today().isoformat()}.", "", intro, "",
           f"PCG iterations, {per_ratio} (* = not converged; compiled runs take the same):", "",
           *_table([first, *eager], [[label(n), *(per_ratio_cell(iterations, n, m) for m in eager)] for n in sizes]),
           "", f"Solve time in ms, setup included, {per_ratio}:", "",
           *_table([first, *variants], [[label(n), *(per_ratio_cell(field("solve_ms"), n, m) for m in variants)]
                                      for n in sizes]),
           "", f"Set-up ms / ms per PCG iteration at ratio {top:,g}:", "",
           *_table([first, *variants], [[label(n), *(f"{field('setup_ms')(n, m, top)} / {field('ms_per_it')(n, m, top)}"
                                                   for m in variants)] for n in sizes])]
    if any(base_method(v) == "htp" for v in variants) and any(base_method(v) in CLASSICAL for v in variants):
        out += ["", f"HTP's solve time (the faster of eager and compiled, setup included) as a fraction of the "
                    f"fastest classical solver's (which one in brackets), {per_ratio}:", "",
                *_table([first, "htp / fastest classical"],
                        [[label(n), " / ".join(htp_over_classical(n, x) for x in ratios)] for n in sizes])]
    if sequence_rows:
        out += ["", f"HTP's set-up reuse, {sequence_label}:", "",
                *_table(["variant", "solves", "network passes", "mean iterations", "mean set-up ms", "mean solve ms"],
                        [[r["variant"], str(r["solves"]), str(r["network_runs"]), f"{r['iterations']:.1f}",
                          f"{r['setup_ms']:.1f}", f"{r['solve_ms']:.1f}"] for r in sequence_rows])]
    if ablations:
        out += ["", f"HTP variants, PCG iterations, {per_ratio} (* = not converged; mean over all systems):", "",
                *_table(["variant", "loss", "highways", *(f"{named(n)}{n[1]:,}" for n in sizes), "mean"],
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
    p.add_argument("--compiled", nargs="*", default=["jacobi", "htp"], choices=METHODS,
                   help="methods also run as torch.compile'd PCG chunks (none: eager only)")
    p.add_argument("--threads", type=int, default=THREADS, help="torch intra-op threads during a solve")
    p.add_argument("--sequence-at", type=float, nargs=2, default=(8192, 100), metavar=("N", "RATIO"),
                   help="where to measure HTP's set-up reuse on consecutive frames")
    p.add_argument("--sequence", type=int, default=20, help="consecutive frames for the reuse table (0: skip)")
    p.add_argument("--no-pyamg", action="store_true", help="skip the pyamg reference row")
    p.add_argument("--scene", type=Path, nargs="+", default=[REPO / "scenes" / "dambreak.yaml"],
                   help="scenes whose frame is solved (several: a table row per scene and N)")
    p.add_argument("--synthetic", nargs="+", choices=[*OBSTACLES, "obstacles"],
                   help="precond.synthetic's obstacle systems instead of scenes (obstacles: all of them)")
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
    if int(args.sequence_at[0]) not in GRIDS:
        p.error(f"--sequence-at N must be one of {', '.join(map(str, sorted(GRIDS)))}, got {args.sequence_at[0]:g}")
    args.out.mkdir(parents=True, exist_ok=True)

    rows, histories = [], {}
    header = (f"{'system':>10} {'N':>7} {'grid':>9} {'ratio':>6} {'method':>16} {'iters':>6} {'conv':>5} {'setup ms':>9} "
              f"{'ms/it':>7} {'solve ms':>9} {'/jacobi':>8} {'/mgpcg':>8} {'mode':>8}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        ablations = (ablation_preconditioners(args.ablations) if not args.no_ablations
                     and "htp" in args.methods and any(args.ablations.glob("*.pt")) else {})
        ablation_its: dict[str, dict[str, tuple[int, bool]]] = {name: {} for name in ablations}
        if args.synthetic:
            kinds = dict.fromkeys(k for name in args.synthetic for k in (OBSTACLES if name == "obstacles" else [name]))
            cases = {k: lambda grid, ratio, k=k: OBSTACLES[k].system(*grid, ratio) for k in kinds}
        else:
            cases = {scene.stem: lambda grid, ratio, scene=scene: scene_system(scene, grid, ratio, args.frame, cache)
                     for scene in args.scene}
        plot_case = next(iter(cases))
        for case, make in cases.items():
            for n in args.sizes:
                grid = GRIDS[n]
                for ratio in args.ratios:
                    system = make(grid, ratio).to(device=args.device)
                    results = run_system(system, args, f"{case:>10} {n:>7} {grid[0]:>4}x{grid[1]:<4} {ratio:>6g}")
                    rows += [dict(scene=case, n=n, nx=grid[0], ny=grid[1], ratio=ratio, method=method,
                                  **{k: v for k, v in r.items() if k != "history"}) for method, r in results.items()]
                    b = random_rhs(system)
                    for name, prec in ablations.items():
                        res = Solver("htp", tol=args.tol, fallback=None, precond=prec).solve(system, b)
                        ablation_its[name][f"{column(case, n, list(cases))}/{ratio:g}"] = (res.iterations, res.converged)
                    if (case, n, ratio) == (plot_case, *args.plot_at):
                        histories = {m: r["history"] for m, r in results.items() if m == base_method(m)}
        sequence_rows, sequence_label = [], ""
        if args.sequence and "htp" in args.methods and not args.synthetic:
            n, ratio, scene = int(args.sequence_at[0]), args.sequence_at[1], args.scene[0]
            first = args.frame
            sequence_label = (f"{scene.stem} frames {first} to {first + args.sequence - 1} at N = {n:,} "
                              f"({GRIDS[n][0]}x{GRIDS[n][1]}), ratio {ratio:g}, each frame's own right-hand side")
            sequence_rows = sequence(scene, GRIDS[n], ratio, first, args.sequence, cache, args.tol, args.threads)
            print(f"\nHTP set-up reuse, {sequence_label}:")
            for r in sequence_rows:
                print(f"  {r['variant']:<28} network passes {r['network_runs']:>3}/{r['solves']}  "
                      f"iterations {r['iterations']:6.1f}  set-up {r['setup_ms']:6.1f} ms  solve {r['solve_ms']:6.1f} ms")
    with open(args.out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if histories:
        n, ratio = args.plot_at
        plot(histories, f"{plot_case}, N={int(n)}, ratio {ratio:g}", args.out / "convergence.png")
    ablation_rows = ablation_table(ablations, ablation_its, args.tol, args.out / "ablations.csv") if ablations else []
    if args.markdown:
        command = " ".join(["python -m precond.bench", *(argv if argv is not None else sys.argv[1:])])
        source = (f"synthetic systems {', '.join(cases)} (precond.synthetic)" if args.synthetic
                  else f"{', '.join(cases)} frame {args.frame}")
        intro = (f"`{command}`: {source}, random right-hand side (seed 0), relative "
                 f"residual {args.tol:g}; after a warm-up solve the solvers take turns, one solve each per round, "
                 f"{args.repeats} round{'s' if args.repeats > 1 else ''}, medians.")
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(rows, ablation_rows, ablation_its, args.ratios, intro, args.device,
                                          sequence_rows, sequence_label, args.threads))
    print(f"wrote {args.out / 'bench.csv'}" + (f" and {args.out / 'convergence.png'}" if histories else "")
          + (f" and {args.out / 'ablations.csv'}" if ablations else "")
          + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
