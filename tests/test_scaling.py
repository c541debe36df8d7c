"""Scaling laws: the fitters recover known laws from noisy synthetic losses, the IsoFLOP ladder keeps
every run's FLOPs within 1% of its budget, and sweep -> fit -> plan run end to end (training faked),
with a local WORKDIR or a gs:// one."""
import json
import math
import os
import types

import numpy as np
import pytest

from openmoe2_jax import flops
from openmoe2_jax.scaling import __main__ as scaling, ladder, laws

LAW = dict(E=1.8, A=60.0, alpha=0.35, B=300.0, beta=0.32)


def _grid_rows(law, noise, seed=0, budgets=(1e12, 3e12, 1e13, 3e13)):
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in np.geomspace(2e4, 2e6, 7):
            d = c / (6 * n)
            rows.append(dict(budget=c, n=n, d=d, loss=float(laws.predict(law, n, d) * math.exp(rng.normal(0, noise)))))
    return rows


def _parametric(rows, inits=None):
    return laws.parametric_fit([r["n"] for r in rows], [r["d"] for r in rows], [r["loss"] for r in rows], inits)


def test_parametric_fit_recovers_the_law_within_its_bootstrap_intervals():
    rows = _grid_rows(LAW, noise=0.003)
    fitted = _parametric(rows)
    boot = laws.bootstrap(lambda pick: _parametric(pick, [laws.law_theta(fitted)]), rows, samples=25)
    ci = laws.intervals(boot, LAW)
    for key, true in LAW.items():
        assert ci[key][0] <= true <= ci[key][1], (key, true, ci[key], fitted[key])
    # Without noise the fit is exact.
    exact = _parametric(_grid_rows(LAW, noise=0.0), [laws.law_theta(fitted)])
    for key, true in LAW.items():
        assert exact[key] == pytest.approx(true, rel=1e-3), key


def test_isoflop_minima_and_power_laws_recover_a_known_optimum():
    k, a = 0.02, 0.5  # N_opt = k C^a
    rng = np.random.default_rng(1)
    rows = []
    for c in (1e12, 1e13, 1e14, 1e15):
        n_opt = k * c ** a
        for n in n_opt * np.geomspace(0.1, 10, 7):
            loss = 2.0 + 1.0 / math.log10(c) + 0.05 * math.log(n / n_opt) ** 2
            rows.append(dict(budget=c, n=n, d=c / (6 * n), loss=loss + rng.normal(0, 1e-4)))
    fitted = laws.isoflop_fit(rows)
    assert fitted["n_opt"]["exponent"] == pytest.approx(a, abs=0.01)
    assert fitted["n_opt"]["k"] == pytest.approx(k, rel=0.2)
    assert fitted["d_opt"]["exponent"] == pytest.approx(1 - a, abs=0.01)  # D = C / 6N
    ci = laws.intervals(laws.bootstrap(laws.isoflop_fit_flat, rows, samples=60), ["n_opt_exponent"])
    assert ci["n_opt_exponent"][0] <= a <= ci["n_opt_exponent"][1]
    # A budget whose ladder does not bracket its optimum is listed with the reason; the others still fit.
    cut = [r for r in rows if not (r["budget"] == 1e12 and r["n"] < k * 1e12 ** a * 1.5)]
    partial = laws.isoflop_fit(cut)
    assert [r["budget"] for r in partial["refused"]] == [1e12] and "outside the ladder" in partial["refused"][0]["reason"]
    assert [m["budget"] for m in partial["minima"]] == [1e13, 1e14, 1e15]
    assert partial["n_opt"]["exponent"] == pytest.approx(a, abs=0.01)


def test_data_constrained_fit_recovers_r_star():
    r_star = 8.0
    rng = np.random.default_rng(2)
    n, d, u, loss = [], [], [], []
    for size in (3e4, 1e5, 3e5):
        for unique in (2e6, 1e7):
            for epochs in (1, 2, 4, 8, 16, 32, 64):
                tokens = unique * epochs
                n.append(size), d.append(tokens), u.append(unique)
                loss.append(float(laws.predict(LAW, size, laws.effective_data(tokens, unique, r_star))
                                  * math.exp(rng.normal(0, 0.002))))
    fitted = laws.data_constrained_fit(None, n, d, u, loss)  # from the grid: the law is not given
    rows = list(zip(n, d, u, loss))
    boot = laws.bootstrap(lambda pick: laws.data_constrained_fit(fitted, *map(list, zip(*pick))), rows, samples=40)
    ci = laws.intervals(boot, ["R_star", "alpha", "beta"])
    assert ci["R_star"][0] <= r_star <= ci["R_star"][1] and fitted["R_star"] == pytest.approx(r_star, rel=0.3)
    for key in ("alpha", "beta"):  # every coefficient is fitted with R*
        assert ci[key][0] <= LAW[key] <= ci[key][1], (key, ci[key])
    # Effective data: D' = D up to one epoch, then saturates at U (1 + R*).
    assert float(laws.effective_data(5.0, 10.0, r_star)) == 5.0
    assert float(laws.effective_data(1e9 * 10.0, 10.0, r_star)) == pytest.approx(10.0 * (1 + r_star))


def test_bad_inputs_get_named_errors():
    rows = _grid_rows(LAW, noise=0.0, budgets=(1e12,))
    with pytest.raises(laws.FitError, match="1 FLOP budget.*at least 2"):
        laws.isoflop_fit(rows)
    two = [r for r in _grid_rows(LAW, noise=0.0) if r["n"] < 5e4]
    with pytest.raises(laws.FitError, match=r"budget 1e\+12 FLOPs: 2 model sizes; .* at least 3"):
        laws.isoflop_fit(two)
    with pytest.raises(laws.FitError, match="at least 5 runs"):
        _parametric(rows[:3])
    with pytest.raises(laws.FitError, match="at least 2"):
        laws.data_constrained_fit(LAW, [1e5], [1e6], [1e6], [3.0])
    with pytest.raises(ValueError, match="--budgets=x: expected comma-separated numbers"):
        scaling._numbers(["x"], "budgets")  # pylint: disable=protected-access
    with pytest.raises(ValueError, match="--objective='xl'"):
        ladder.points("cpu", "xl", "dense", [1e12])


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_isoflop_ladder_keeps_flops_within_one_percent(ffn):
    budgets = (1e12, 3e12, 1e13)
    points = ladder.points("cpu", "diffusion", ffn, budgets)
    for c in budgets:
        sizes = [p for p in points if p.budget == c]
        assert len(sizes) >= 4
        for p in sizes:
            assert abs(p.flops / c - 1) < 0.01, p.name
            assert p.flops_per_token == flops.train_flops_per_token(flops.model_config(p.config), 128)
            assert p.config.train.steps >= ladder.MIN_STEPS
        widths = [p.config.model.d_model for p in sizes]
        assert widths == sorted(widths) and len(set(widths)) == len(widths)
    narrow = {p.config.model.d_model: p.config.model for p in points if p.config.model.d_model < 32}
    assert {d: (m.num_layers, m.num_heads, m.head_dim) for d, m in narrow.items()} == {16: (1, 2, 8), 24: (2, 2, 12)}
    base = next(p for p in points if p.config.model.d_model == 64)  # the cpu scale's own shape
    assert (base.config.model.num_layers, base.config.model.num_heads) == (4, 4)
    if ffn == "moe":
        assert base.config.moe.expert_mlp_dim == 32 and base.config.model.ffn == "moe"
    else:
        assert base.config.model.mlp_dim == 128 and base.config.model.ffn == "dense"


CORPUS = 5_000_000  # the fake training split's tokens: the largest runs of the smoke ladder outgrow it


def test_sweep_then_fit_then_plan(tmp_path, monkeypatch):
    """The sweep at `smoke` lists and 'trains' its runs (a fake trainer writes each summary from a known
    law), `fit` reads them back, `plan` reads both objectives' fits."""
    trained = []

    def fake_train(config, workdir, stop_at_step=None, log=print):
        del stop_at_step, log
        counts = flops.param_counts(flops.model_config(config))
        tokens = config.train.steps * config.train.batch_size * config.data.seq_len
        u = config.data.max_train_tokens or CORPUS  # the training split is a unique-token budget too
        data = laws.effective_data(tokens, u, 5.0)
        law = dict(LAW, E=LAW["E"] + (0.3 if config.objective.kind == "diffusion" else 0.0))
        trained.append(workdir)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(dict(steps=config.train.steps, unique_train_tokens=u, final_validation_loss=float(
                laws.predict(law, counts["active_non_embedding"], data))), f)
        return types.SimpleNamespace(preempted=False)

    monkeypatch.setattr(scaling.loop, "train", fake_train)
    root = str(tmp_path)
    for objective in ("diffusion", "ar"):
        path = scaling.sweep("smoke", objective, "dense", [3e12, 1e13, 3e13], root, unique_tokens=[200_000],
                             log=lambda *a: None)
        listed = json.loads(open(path).read())["runs"]
        assert len(listed) >= 12 and any(r["unique_tokens"] for r in listed)
        if objective == "diffusion":
            diffusion_runs = len(listed)
    count = len(trained)
    scaling.sweep("smoke", "ar", "dense", [3e12, 1e13, 3e13], root, unique_tokens=[200_000], log=lambda *a: None)
    assert len(trained) == count  # finished runs are not trained again
    out = scaling.fit(scaling.sweep_dir(root, "smoke", "diffusion", "dense"), samples=10, log=lambda *a: None)
    assert out["parametric"]["E"] == pytest.approx(2.1, rel=0.05)
    assert "R_star" in out["data_constrained"]
    # a ladder run that outgrew its training split counts as repeated data, not as a single pass
    outgrown = [p for p in out["points"] if p["unique_tokens"] == CORPUS and p["d"] > CORPUS]
    assert outgrown and all(p["epochs"] == pytest.approx(p["d"] / CORPUS) for p in outgrown)
    assert len(out["points"]) == diffusion_runs
    for name in ("fit.json", "fit.md", "isoflop.png", "data_constrained.png"):
        assert os.path.exists(os.path.join(scaling.sweep_dir(root, "smoke", "diffusion", "dense"), name))
    table = open(os.path.join(scaling.sweep_dir(root, "smoke", "diffusion", "dense"), "fit.md")).read()
    assert f"{out['points'][0]['loss']:.3f}" in table and "N_opt = " in table and "R* = " in table
    scaling.fit(scaling.sweep_dir(root, "smoke", "ar", "dense"), samples=10, log=lambda *a: None)
    text = scaling.plan(root, "smoke", "dense", 1e15, 1e6)
    assert "| diffusion |" in text and "| ar |" in text
    with pytest.raises(ValueError, match="sweep.json: not found"):
        scaling.fit(scaling.sweep_dir(root, "smoke", "diffusion", "moe"))


def test_a_sweep_under_a_bucket_lists_its_runs_there(fake_gcs, tmp_path):
    """WORKDIR=gs://... (an in-memory bucket, conftest.fake_gcs): sweep.json and the run directories it
    lists are in the bucket, and read_sweep (what fit reads) and plan read from there."""
    root = "gs://bucket/runs"
    directory = scaling.sweep_dir(root, "smoke", "ar", "dense")
    assert str(directory) == "gs://bucket/runs/smoke/scaling/ar_dense"
    path = scaling.sweep("smoke", "ar", "dense", [3e12], root, collect_only=True, log=lambda *a: None)
    assert str(path) == "gs://bucket/runs/smoke/scaling/ar_dense/sweep.json"
    assert "/bucket/runs/smoke/scaling/ar_dense/sweep.json" in fake_gcs
    data, rows = scaling.read_sweep(directory)
    workdirs = [w for r in data["runs"] for w in r["workdirs"]]
    assert workdirs and all(w.startswith("gs://bucket/runs/smoke/runs/") for w in workdirs)
    assert rows == []  # listed only (--collect_only): none has a summary.json
    with pytest.raises(ValueError, match="no fit.json .* under gs://bucket/runs"):
        scaling.plan(root, "smoke", "dense", 1e15)
    assert os.listdir(tmp_path) == []  # nothing under the working directory
