"""Scaling laws from this project's own runs.

  python -m openmoe2_jax.scaling sweep --objective=diffusion --ffn=dense --budgets=1e12,3e12,1e13 \
      --scale=cpu --workdir=runs [--unique_tokens=20000,80000] [--seeds=1] [--collect_only]
  python -m openmoe2_jax.scaling fit --objective=diffusion --ffn=dense --scale=cpu --workdir=runs
  python -m openmoe2_jax.scaling plan --flops=1e21 [--unique_tokens=1e9] --scale=paper --workdir=runs

`sweep` trains (or resumes, or with --collect_only only reads) the IsoFLOP runs of scaling/ladder.py in
WORKDIR/<scale>/runs/<key>/seed<k> (the run directories of `reproduce`: identical configs are one run)
and lists them in WORKDIR/<scale>/scaling/<objective>_<ffn>/sweep.json. `fit` reads that list and the
runs' final validation losses (mean over seeds) and writes fit.json (IsoFLOP minima and power laws,
the parametric law, the data-constrained R* when the sweep had repeated-data runs, each with bootstrap
95% intervals) and isoflop.png / data_constrained.png beside it. `plan` reads the diffusion and AR
fits of a scale (either FFN; --ffn picks) and prints the compute-optimal (N, D, epochs) and predicted
loss for a FLOP budget, with intervals.
"""
from __future__ import annotations

import json
import math

import numpy as np
from absl import app, flags
from etils import epath

from openmoe2_jax import cli
from openmoe2_jax.configs import scales
from openmoe2_jax.experiments import runs
from openmoe2_jax.runtime import paths
from openmoe2_jax.scaling import ladder, laws
from openmoe2_jax.train import loop

def _define_flags():
    """The CLI's flags (defined only when run as a program: `reproduce` has its own --scale)."""
    flags.DEFINE_enum("objective", "diffusion", ["diffusion", "ar"], "Training objective.")
    flags.DEFINE_enum("ffn", "dense", ["dense", "moe"], "FFN of every size of the ladder.")
    flags.DEFINE_list("budgets", [], "sweep: FLOP budgets, e.g. 1e12,3e12,1e13.")
    flags.DEFINE_list("unique_tokens", [], "sweep: unique-token budgets U for repeated-data runs; "
        "plan: the unique tokens available (one number).")
    flags.DEFINE_enum("scale", "cpu", list(scales.SCALES), "Scale whose ladder the sweep uses.")
    flags.DEFINE_string("workdir", "runs", "Root of the run directories.")
    flags.DEFINE_integer("seeds", 1, "sweep: seeds per run.")
    flags.DEFINE_bool("collect_only", False, "sweep: only list the runs (they were trained elsewhere).")
    flags.DEFINE_integer("max_steps", 100_000, "sweep: leave out sizes that would train longer.")
    flags.DEFINE_float("flops", 0.0, "plan: the FLOP budget.")
    flags.DEFINE_integer("bootstrap", 200, "fit: bootstrap resamplings for the intervals.")


COMMANDS = ("sweep", "fit", "plan")


def sweep_dir(root: epath.PathLike, scale: str, objective: str, ffn: str) -> epath.Path:
    return epath.Path(root) / scale / "scaling" / f"{objective}_{ffn}"


def _numbers(values, flag: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated numbers, e.g. 1e12,3e12") from None


def sweep(scale: str, objective: str, ffn: str, budgets, root: str, unique_tokens=(), seeds: int = 1,
          collect_only: bool = False, max_steps: int = 100_000, log=print) -> epath.Path:
    """Trains (or resumes / skips) every run of the sweep and writes its sweep.json; returns its path."""
    if seeds < 1:
        raise ValueError(f"--seeds={seeds}: expected at least 1")
    planned = ladder.points(scale, objective, ffn, budgets, [int(u) for u in unique_tokens], max_steps)
    if not planned:
        raise ValueError(f"--budgets={','.join(f'{b:g}' for b in budgets)}: no size of the {scale} ladder "
                         f"trains {ladder.MIN_STEPS}..{max_steps} steps at these budgets")
    listed = []
    for i, p in enumerate(planned):
        key = runs.run_key(p.config)
        runs.check_config(runs.key_dir(root, scale, key), runs.to_json(runs.canonical(p.config), indent=2),
                          write=not collect_only)
        dirs = [runs.run_dir(root, scale, key, s) for s in range(seeds)]
        for seed, workdir in enumerate(dirs):
            if collect_only or runs.finished(workdir, p.config.train.steps):
                continue
            log(f"[{i + 1}/{len(planned)}] {p.name} seed {seed}: {p.config.train.steps} steps, N {p.n:,}, "
                f"{p.tokens:,} tokens, in {workdir}")
            done = loop.train(runs.seeded(p.config, seed), workdir, log=lambda m, n=p.name: log(f"  [{n}] {m}"))
            if done.preempted:
                raise SystemExit(f"error: {p.name} seed {seed}: stopped by SIGTERM (checkpoint saved); the same "
                                 "command resumes the sweep")
        listed.append(dict(name=p.name, budget=p.budget, n=p.n, total_params=p.total_params,
                           flops_per_token=p.flops_per_token, d=p.tokens, unique_tokens=p.unique_tokens,
                           flops=p.flops, run=f"runs/{key}", workdirs=[str(d) for d in dirs]))
    out = sweep_dir(root, scale, objective, ffn)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.json"
    path.write_text(json.dumps(dict(scale=scale, objective=objective, ffn=ffn,
                                    law_n="non-embedding active parameters", runs=listed), indent=2))
    return path


def read_sweep(directory: epath.PathLike) -> tuple[dict, list[dict]]:
    """sweep.json and its runs with `loss` (mean final validation loss over the seeds that finished)."""
    path = epath.Path(directory) / "sweep.json"
    if not path.exists():
        raise ValueError(f"{path}: not found; run `python -m openmoe2_jax.scaling sweep` with the same "
                         "--objective, --ffn, --scale and --workdir first")
    data = json.loads(path.read_text())
    rows = []
    for r in data["runs"]:
        losses, unique = [], r["unique_tokens"]
        for workdir in r["workdirs"]:
            summary = epath.Path(workdir) / "summary.json"
            if summary.exists():
                s = json.loads(summary.read_text())
                losses.append(s["final_validation_loss"])
                unique = s.get("unique_train_tokens") or unique
        if losses and all(math.isfinite(x) for x in losses):
            rows.append(dict(r, loss=float(np.mean(losses)), seeds=len(losses), max_train_tokens=r["unique_tokens"],
                             unique_tokens=unique, epochs=r["d"] / unique if unique else 0.0))
    return data, rows


def fit(directory: epath.PathLike, samples: int = 200, log=print) -> dict:
    """Fits (a), (b) and (c) of scaling/laws.py to a sweep's finished runs; writes fit.json and plots."""
    data, rows = read_sweep(directory)
    # (a) compares sizes on the same data: every run not limited to a unique-token budget U by the sweep.
    # (b) needs data seen once, (c) data seen more than once (the training split's own size counts as U).
    ladder_runs = [r for r in rows if not r["max_train_tokens"]]
    fresh = [r for r in rows if r["epochs"] <= 1]
    repeated = [r for r in rows if r["epochs"] > 1]
    log(f"{len(rows)} of {len(data['runs'])} listed runs finished: {len(fresh)} saw their data at most once, "
        f"{len(repeated)} repeated it")
    try:
        iso = laws.isoflop_fit(ladder_runs)
        iso_boot = laws.bootstrap(laws.isoflop_fit_flat, ladder_runs, samples)
        iso["intervals"] = laws.intervals(iso_boot, ["n_opt_exponent", "d_opt_exponent"])
    except laws.FitError as e:  # (b) and (c) do not need it
        iso = dict(error=str(e), minima=[])
        log(f"IsoFLOP fit (a): {e}")

    def parametric(pick, inits=None):
        return laws.parametric_fit([r["n"] for r in pick], [r["d"] for r in pick], [r["loss"] for r in pick], inits)

    def constrained(pick, start):
        return laws.data_constrained_fit(start, *(np.array([r[k] for r in pick]) for k in
                                                  ("n", "d", "unique_tokens", "loss")))

    keys = ("E", "A", "alpha", "B", "beta")
    out = dict(scale=data["scale"], objective=data["objective"], ffn=data["ffn"], law_n=data["law_n"],
               runs=len(rows), isoflop=iso, tokens_per_parameter=_tokens_per_parameter(iso),
               points=[{k: r[k] for k in ("name", "budget", "n", "total_params", "d", "unique_tokens",
                                          "max_train_tokens", "epochs", "loss", "seeds")} for r in rows])
    law = None
    try:
        law = parametric(fresh)
        boot = laws.bootstrap(lambda pick: parametric(pick, [laws.law_theta(law)]), fresh, samples)
        out["parametric"] = dict(law, intervals=laws.intervals(boot, keys))
    except laws.FitError as e:  # too few single-pass runs: (c) still fits every run
        out["parametric"] = dict(error=str(e))
        log(f"parametric fit (b) on single-pass runs: {e}")
    if len(repeated) >= 2:
        joint = constrained(rows, law)
        boot_c = laws.bootstrap(lambda pick: constrained(pick, joint), rows, samples)
        out["data_constrained"] = dict(joint, intervals=laws.intervals(boot_c, (*keys, "R_star")))
    directory = epath.Path(directory)
    (directory / "fit.json").write_text(json.dumps(out, indent=2))
    (directory / "fit.md").write_text(report(out))
    _plot(directory, out, ladder_runs, repeated)
    return out


def _law_line(law: dict) -> str:
    """'E + A / N^alpha + B / D^beta' with each coefficient's bootstrap interval."""
    ci = law.get("intervals", {})
    num = lambda k: f"{law[k]:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
    line = f"L = {num('E')} + {num('A')} / N^{num('alpha')} + {num('B')} / D^{num('beta')}"
    return line + (f", R* = {num('R_star')}" if "R_star" in law else "")


def report(out: dict) -> str:
    """fit.md: the ladder runs' final losses by budget and size (not those limited to --unique_tokens),
    the IsoFLOP minima, the laws (95% intervals)."""
    points = out["points"]
    sizes = sorted({p["n"] for p in points})
    budgets = sorted({p["budget"] for p in points})
    lines = [f"# Scaling fit: {out['objective']} {out['ffn']} ({out['scale']})", "",
             f"Final validation loss (nats/token) of each run, by FLOP budget C and N ({out['law_n']}); "
             "(epochs) where a run repeated its data.", "",
             "| C | " + " | ".join(f"N {n:,}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for c in budgets:
        cells = []
        for n in sizes:
            run = [p for p in points if p["budget"] == c and p["n"] == n and not p.get("max_train_tokens")]
            cells.append(" ".join(f"{p['loss']:.3f}" + (f" ({p['epochs']:.1f})" if p["epochs"] > 1 else "")
                                  for p in run))
        lines.append(f"| {c:.0e} | " + " | ".join(cells) + " |")
    iso = out["isoflop"]
    lines += ["", "## (a) IsoFLOP minima", ""]
    if "error" in iso:
        lines.append(f"No power law: {iso['error']}")
    else:
        lines += ["| C | N_opt | D_opt | D_opt / N_opt | loss at N_opt |", "|---|---|---|---|---|"]
        lines += [f"| {m['budget']:.0e} | {m['n_opt']:,.0f} | {m['d_opt']:,.0f} | {m['d_opt'] / m['n_opt']:.1f} | "
                  f"{m['loss_opt']:.3f} |" for m in iso["minima"]]
        lines += [f"| {r['budget']:.0e} | refused: {r['reason']} | | | |" for r in iso.get("refused", [])]
        ci = iso["intervals"]
        lines += ["", f"N_opt = {iso['n_opt']['k']:.3g} C^{iso['n_opt']['exponent']:.3f} "
                  f"[{ci['n_opt_exponent'][0]:.3f}, {ci['n_opt_exponent'][1]:.3f}], "
                  f"D_opt = {iso['d_opt']['k']:.3g} C^{iso['d_opt']['exponent']:.3f} "
                  f"[{ci['d_opt_exponent'][0]:.3f}, {ci['d_opt_exponent'][1]:.3f}]"]
    lines += ["", "## (b) single-pass law", "",
              out["parametric"].get("error") or _law_line(out["parametric"])]
    if "data_constrained" in out:
        lines += ["", "## (c) data-constrained law (every run, D -> D')", "", _law_line(out["data_constrained"])]
    return "\n".join(lines) + "\n"


def _tokens_per_parameter(iso: dict) -> list[dict]:
    return [dict(budget=m["budget"], tokens_per_parameter=m["d_opt"] / m["n_opt"]) for m in iso["minima"]]


def _plot(directory: epath.Path, out: dict, ladder_runs: list[dict], repeated: list[dict]) -> None:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in out["isoflop"]["minima"]:
        pts = sorted((r for r in ladder_runs if r["budget"] == m["budget"]), key=lambda r: r["n"])
        (line,) = ax.plot([r["n"] for r in pts], [r["loss"] for r in pts], "o", label=f"C = {m['budget']:.1e}")
        x = np.linspace(math.log(pts[0]["n"]), math.log(pts[-1]["n"]), 50)
        c0, c1, c2 = m["coefficients"]
        ax.plot(np.exp(x), c0 + c1 * x + c2 * x ** 2, "-", color=line.get_color(), alpha=0.6)
        ax.plot([m["n_opt"]], [m["loss_opt"]], "*", color=line.get_color(), ms=12)
    ax.set(xscale="log", xlabel="N (non-embedding active parameters)", ylabel="validation loss (nats/token)",
           title=f"IsoFLOP profiles: {out['objective']} {out['ffn']} ({out['scale']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.save_png(fig, directory / "isoflop.png")
    plt.close(fig)
    if repeated:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        law = out.get("data_constrained") or dict(out["parametric"], R_star=float("inf"))
        for n in sorted({r["n"] for r in repeated}):
            pts = sorted((r for r in repeated if r["n"] == n), key=lambda r: r["d"] / r["unique_tokens"])
            epochs = [r["d"] / r["unique_tokens"] for r in pts]
            (line,) = ax.plot(epochs, [r["loss"] for r in pts], "o", label=f"N = {n:,}")
            if "E" in law and math.isfinite(law["R_star"]):
                pred = [float(laws.predict(law, n, laws.effective_data(r["d"], r["unique_tokens"], law["R_star"])))
                        for r in pts]
                ax.plot(epochs, pred, "-", color=line.get_color(), alpha=0.6)
        ax.set(xscale="log", xlabel="epochs (D / U)", ylabel="validation loss (nats/token)",
               title=f"repeated data: {out['objective']} {out['ffn']} (lines: fitted R*)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.save_png(fig, directory / "data_constrained.png")
        plt.close(fig)


def plan(root: epath.PathLike, scale: str, ffn: str, budget: float, unique_tokens: float = 0.0) -> str:
    """The compute-optimal (N, D, epochs) and predicted loss for `budget`, diffusion vs AR, from the fits
    of `scale` (each law's bootstrap interval as the range of its N_opt power law)."""
    if budget <= 0:
        raise ValueError(f"--flops={budget:g}: expected a positive FLOP budget")
    lines = [f"Compute-optimal plan for C = {budget:.3g} FLOPs" +
             (f", U = {unique_tokens:.3g} unique tokens" if unique_tokens else "") + f" ({scale} fits, {ffn})", "",
             "| objective | N_opt (IsoFLOP power law, 95% interval) | D_opt | epochs | predicted loss |",
             "|---|---|---|---|---|"]
    found = 0
    for objective in ("diffusion", "ar"):
        path = sweep_dir(root, scale, objective, ffn) / "fit.json"
        if not path.exists():
            lines.append(f"| {objective} | no fit ({path} not found) | | | |")
            continue
        found += 1
        fitted = json.loads(path.read_text())
        iso = fitted["isoflop"]
        if "error" in iso:
            lines.append(f"| {objective} | no IsoFLOP law: {iso['error']} | | | |")
            continue
        n = iso["n_opt"]["k"] * budget ** iso["n_opt"]["exponent"]
        d = iso["d_opt"]["k"] * budget ** iso["d_opt"]["exponent"]
        low, high = (iso["n_opt"]["k"] * budget ** e for e in iso["intervals"]["n_opt_exponent"])
        # With a unique-token budget, the data-constrained law (its own coefficients, D -> D');
        # otherwise the single-pass law (b), or (c) where (b) could not be fitted (D' = D below one epoch).
        law, effective = fitted.get("data_constrained"), d
        if law and unique_tokens:
            effective = float(laws.effective_data(d, unique_tokens, law["R_star"]))
        elif "E" in fitted["parametric"]:
            law = fitted["parametric"]
        if law is None:
            lines.append(f"| {objective} | {n:.3g} ({min(low, high):.3g} – {max(low, high):.3g}) | {d:.3g} | "
                         f"| no loss law: {fitted['parametric']['error']} |")
            continue
        loss = float(laws.predict(law, n, effective))
        epochs = f"{d / unique_tokens:.1f}" if unique_tokens else "—"
        lines.append(f"| {objective} | {n:.3g} ({min(low, high):.3g} – {max(low, high):.3g}) | {d:.3g} | "
                     f"{epochs} | {loss:.3f} |")
    if not found:
        raise ValueError(f"no fit.json for --scale={scale} --ffn={ffn} under {root}; run `sweep` and `fit` first")
    return "\n".join(lines)


def main(argv):
    cli.quiet_logging()
    F = flags.FLAGS  # pylint: disable=invalid-name
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise SystemExit(f"error: expected one command, {' | '.join(COMMANDS)}; got {argv[1:]}")
    with cli.user_errors(ValueError, laws.FitError):
        if argv[1] == "sweep":
            path = sweep(F.scale, F.objective, F.ffn, _numbers(F.budgets, "budgets"),
                         F.workdir, _numbers(F.unique_tokens, "unique_tokens"), F.seeds,
                         F.collect_only, F.max_steps)
            print(f"sweep listed in {path}")
        elif argv[1] == "fit":
            out = fit(sweep_dir(F.workdir, F.scale, F.objective, F.ffn), F.bootstrap)
            print(json.dumps(out, indent=2))
        else:
            unique = _numbers(F.unique_tokens, "unique_tokens")
            print(plan(F.workdir, F.scale, F.ffn, F.flops, unique[0] if unique else 0.0))


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
