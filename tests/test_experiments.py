"""Experiment IDs, FLOPs accounting, run keys and the table reproduction."""
import hashlib
import json
import os
import types

import matplotlib.image
import ml_collections
import numpy as np
import pytest
from etils import epath

from openmoe2_jax import flops, validation
from openmoe2_jax.configs import scales
from openmoe2_jax.data import pipeline
from openmoe2_jax.experiments import registry, reproduce, runs, summary
from openmoe2_jax.train import loop


@pytest.mark.parametrize("scale", scales.SCALES)
def test_every_registered_id_builds_a_valid_config(scale):
    ids = registry.all_ids()
    assert len(ids) == 38 and len(registry.SECTION_MODULES) == 11  # section 2: 6 variants x 2 budgets
    for experiment_id in ids:
        validation.validate(registry.get_config(experiment_id, scale))


def test_aliases_resolve_to_their_variants():
    assert registry.resolve("moeec_100b_1e_8b1b7a_difflm") == (1, "ec")
    assert registry.resolve("moetopk_1b_96e_8b1a_ar") == (2, "ar_moe_8b1a")
    for alias, target in registry.ALIASES.items():
        assert registry.resolve(alias) == registry.resolve(target)
    with pytest.raises(ValueError, match="section 3 has"):
        registry.resolve("sec03/nope")


def test_paper_scale_lands_on_8b_total_1p7b_active():
    config = scales.get("paper")
    counts = flops.param_counts(flops.model_config(config))
    # By hand: 28 x 2048, 16 x 128 heads, 64 + 2 experts of 640, k = 6, 100,352 embedding rows.
    attention = 2048 * 128 * 64 + 2 * 128 + 2 * 2048          # q, k, v, o + qk-norm + two norms
    routed, shared, router = 3 * 2048 * 640 * 64, 3 * 2048 * 1280, 2048 * 64
    embedding = 2 * 100_352 * 2048
    total = 28 * (attention + routed + shared + router) + 2048 + embedding
    active = 28 * (attention + 6 * 3 * 2048 * 640 + shared + router) + 2048 + embedding
    assert counts["total"] == total == 8_151_229_440        # "8B total"
    assert counts["active"] == active == 1_765_401_600      # "1.7B active"


@pytest.mark.parametrize("scale", ["paper", "small", "cpu"])
@pytest.mark.parametrize("routing", ["ec", "tc"])
def test_flops_matched_dense_has_the_moe_active_flops(scale, routing):
    config = scales.get(scale)
    config.moe.routing = routing
    moe = flops.train_flops_per_token(flops.model_config(config), config.data.seq_len)
    dense_cfg = flops.matched_dense(config, "flops")
    dense = flops.train_flops_per_token(flops.model_config(dense_cfg), config.data.seq_len)
    # Equal FFN FLOPs; the MoE adds only its router (6 x layers x d x E: 1.1% at cpu, 0.1% at paper).
    router = 6 * config.model.num_layers * config.model.d_model * config.moe.num_experts
    assert moe - dense == pytest.approx(router, rel=1e-6) and router / moe < 0.015
    params = flops.param_counts(flops.model_config(flops.matched_dense(config, "params")))["total"]
    total = flops.param_counts(flops.model_config(config))["total"]
    assert abs(params - total) / total < 0.001


@pytest.mark.parametrize("scale", ["paper", "cpu"])
def test_sec02_repeats_one_budget_96_and_another_16_times_at_every_scale(scale):
    def epochs(c):
        return c.train.steps * c.train.batch_size * c.data.seq_len / c.data.max_train_tokens
    main, wide = registry.get_config("sec02/dlm_moe_8b1a", scale), registry.get_config("sec02/dlm_moe_8b1a_u6", scale)
    assert epochs(main) == pytest.approx(96, rel=0.02) and epochs(wide) == pytest.approx(16, rel=0.02)
    assert main.data.num_epochs == 0 and main.data.max_train_tokens % main.data.seq_len == 0
    assert main.train.steps // main.eval.every_steps == 16
    assert registry.get_config("sec02/ar_moe_8b1a", scale).moe.routing == "tc"
    assert registry.get_config("sec02/ar_moe_8b1a", scale).objective.kind == "ar"
    if scale == "paper":  # the study's 1B unique tokens x 96 epochs: 24,000 x 1,024 x 4,096 / 96
        assert main.data.max_train_tokens == 256_000 * 4096


@pytest.mark.parametrize("command, expected", [
    ("flops", "| this config | MoE 16x2560 k=6 +2 shared (ec) | 8,148,476,928 | 1,762,649,088 |"),
    ("plan", "yes with full remat"),
])
def test_flops_and_plan_take_an_experiment_id_at_a_scale(command, expected):
    """sec06/ec_16e at the paper scale: 16 experts of 4x the width, same total and active parameters."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel
    out = subprocess.run([sys.executable, "-m", f"openmoe2_jax.{command}", "--experiment=sec06/ec_16e",
                          "--scale=paper"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and expected in out.stdout, out.stderr[-2000:]


def test_run_key_is_the_hash_of_the_sorted_config_json_without_seed():
    config = ml_collections.ConfigDict(dict(seed=5, b=(1, 2), a=0.5, moe=dict(upcycle_from="")))
    by_hand = hashlib.sha256(b'{"a":0.5,"b":[1,2],"moe":{"upcycle_from":""}}').hexdigest()[:16]
    assert runs.run_key(config) == by_hand
    config.seed = 0
    assert runs.run_key(config) == by_hand  # the seed is the subdirectory, not the key
    config.a = 0.25
    assert runs.run_key(config) != by_hand
    dependent = hashlib.sha256(b'{"a":0.25,"b":[1,2],"moe":{"upcycle_from":"run:abc"}}').hexdigest()[:16]
    assert runs.run_key(config, "abc") == dependent
    # A field added later keeps the keys of runs made before it while it computes what they computed.
    config.objective = dict(kind="diffusion", masked_head=0.0)
    before = hashlib.sha256(b'{"a":0.25,"b":[1,2],"moe":{"upcycle_from":""},"objective":{"kind":"diffusion"}}')
    assert runs.run_key(config) == before.hexdigest()[:16]
    config.objective.masked_head = 0.6
    assert runs.run_key(config) != before.hexdigest()[:16]


def test_identical_variants_of_different_sections_share_one_run_and_keys_ignore_the_root():
    keys = {n: {v: rs[0].key for v, rs in reproduce.plan(registry.section(n), "cpu", "/a", 2).items()}
            for n in registry.SECTION_MODULES}
    baseline = {keys[n]["ec"] for n in (1, 3, 4, 5, 6, 7, 8, 9, 10, 11)}
    assert len(baseline) == 1
    assert keys[1]["tc"] == keys[3]["tc"] == keys[9]["tc"]
    assert len({k for n in keys for k in keys[n].values()}) == 38 - 9 - 2  # ec 10x, tc 3x
    moved = reproduce.plan(registry.section(7), "cpu", "/elsewhere/b", 2)
    assert {v: rs[0].key for v, rs in moved.items()} == keys[7]
    upcycle = moved["ec_upcycle"]
    assert [r.config.moe.upcycle_from for r in upcycle] == [
        f"/elsewhere/b/cpu/runs/{keys[7]['dense_source']}/seed{s}" for s in (0, 1)]
    assert [r.config.seed for r in upcycle] == [0, 1]
    assert json.loads(upcycle[0].config_json)["moe"]["upcycle_from"] == f"run:{keys[7]['dense_source']}"
    # A different dependency (here: shorter) gives the dependent run a different key.
    assert reproduce.plan(registry.section(7), "cpu", "/a", 1, steps=40)["ec_upcycle"][0].key != \
        reproduce.plan(registry.section(7), "cpu", "/a", 1, steps=80)["ec_upcycle"][0].key
    with pytest.raises(ValueError, match="seeds = 0: expected at least 1"):
        reproduce.plan(registry.section(3), "cpu", "/a", 0)


def _fake_validation_loss(config):
    return 6.0 + 0.01 * config.seed + (0.5 if config.moe.routing == "tc" else 0.0)


@pytest.fixture
def fake_train(monkeypatch):
    """Replaces training by writing a summary.json (local or gs://); returns the list of (workdir as a
    string, seed) trained."""
    calls = []

    def train(config, workdir, stop_at_step=None, log=print):
        del stop_at_step, log
        calls.append((str(workdir), config.seed))
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        (epath.Path(workdir) / "summary.json").write_text(json.dumps(
            dict(steps=config.train.steps, final_train_loss=7.0, wall_seconds=30.0,
                 final_validation_loss=_fake_validation_loss(config))))
        return types.SimpleNamespace(steps=config.train.steps, preempted=False)

    monkeypatch.setattr(reproduce.loop, "train", train)
    return calls


def test_a_section_after_another_reuses_the_shared_baseline(tmp_path, fake_train):
    root, quiet = str(tmp_path), lambda *a: None
    reproduce.reproduce(4, "smoke", root, seeds=2, log=quiet)
    assert len(fake_train) == 4  # ec, ec_lbl x 2 seeds
    ec_dirs = {w for w, _ in fake_train[:2]}
    seen = []
    text = reproduce.reproduce(3, "smoke", root, seeds=2, log=seen.append)
    assert len(fake_train) == 6 and {s for _, s in fake_train[4:]} == {0, 1}  # only tc trained
    assert [m for m in seen if "skipped" in m] == [  # tc's 2 runs first, then ec's: 4 in all
        f"[{3 + s}/4] sec03/ec seed {s}: finished in {w}, skipped" for s, w in enumerate(sorted(ec_dirs))]
    r3 = json.loads((tmp_path / "smoke" / "sec03" / "results.json").read_text())
    r4 = json.loads((tmp_path / "smoke" / "sec04" / "results.json").read_text())
    assert r3["results"]["ec"]["run"] == r4["results"]["ec"]["run"]
    assert r3["results"]["tc"]["validation_loss"] == [6.5, 6.51]  # per seed, as the fake wrote them
    assert r3["seeds"] == 2 and r3["outcome"] == "disagrees"      # tc 0.5 above ec, std 0.007
    assert "| ec | `runs/" in text and "6.0050 ± 0.0071 (2)" in text
    ec_key = r3["results"]["ec"]["run"].split("/")[1]
    stored = json.loads((tmp_path / "smoke" / "runs" / ec_key / "config.json").read_text())
    assert "seed" not in stored and stored["moe"]["routing"] == "ec"
    # Again: nothing trains. A third seed trains seed 2 of both variants only.
    assert reproduce.reproduce(3, "smoke", root, seeds=2, log=quiet) == text
    assert len(fake_train) == 6
    reproduce.reproduce(3, "smoke", root, seeds=3, log=quiet)
    assert sorted(s for _, s in fake_train[6:]) == [2, 2]
    # An interrupted run (summary short of the steps) runs again (the trainer resumes it); only it.
    tc_dir = tmp_path / "smoke" / r3["results"]["tc"]["run"] / "seed1"
    (tc_dir / "summary.json").write_text(json.dumps(dict(steps=1, final_train_loss=7.0, wall_seconds=1.0,
                                                         final_validation_loss=6.0)))
    reproduce.reproduce(3, "smoke", root, seeds=3, log=quiet)
    assert fake_train[8:] == [(str(tc_dir), 1)]
    # Collect only: a missing run is an error naming it.
    with pytest.raises(reproduce.errors.CheckpointError, match=r"sec03/tc seed 3: .*seed3 has no summary"):
        reproduce.reproduce(3, "smoke", root, collect_only=True, seeds=4)
    assert len(fake_train) == 9
    # A run directory whose config.json is not the config of its key is refused.
    (tmp_path / "smoke" / "runs" / ec_key / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a different config"):
        reproduce.reproduce(3, "smoke", root, seeds=3, log=quiet)


def test_run_directories_under_a_bucket_stay_in_it():
    """A gs:// root is joined as a URL, not made a path under the working directory (gs:/b/...)."""
    root = "gs://b/runs"
    assert str(runs.key_dir(root, "cpu", "0123abcd")) == "gs://b/runs/cpu/runs/0123abcd"
    assert str(runs.run_dir(root, "cpu", "0123abcd", 2)) == "gs://b/runs/cpu/runs/0123abcd/seed2"
    planned = reproduce.plan(registry.section(7), "cpu", root, 2)
    assert all(str(r.workdir).startswith("gs://b/runs/cpu/runs/") for rs in planned.values() for r in rs)
    dense_key = planned["dense_source"][0].key
    assert [r.config.moe.upcycle_from for r in planned["ec_upcycle"]] == [
        f"gs://b/runs/cpu/runs/{dense_key}/seed{s}" for s in (0, 1)]  # a string, as the config holds it
    assert str(runs.run_dir("runs/", "cpu", "k", 0)) == os.path.join("runs", "cpu", "runs", "k", "seed0")


def test_a_section_under_a_bucket_is_written_and_read_back_there(fake_gcs, fake_train, tmp_path):
    """reproduce and summary with WORKDIR=gs://... (an in-memory bucket, conftest.fake_gcs): the run
    directories, their config.json, the table, results.json and the PNG all land in the bucket."""
    root, quiet = "gs://bucket/runs", lambda *a: None
    text = reproduce.reproduce(3, "smoke", root, seeds=2, log=quiet)
    assert len(fake_train) == 4 and all(w.startswith("gs://bucket/runs/smoke/runs/") for w, _ in fake_train)
    out = epath.Path(root) / "smoke" / "sec03"
    assert (out / "table.md").read_text() == text
    results = json.loads((out / "results.json").read_text())
    assert results["results"]["tc"]["validation_loss"] == [6.5, 6.51]
    assert (out / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    ec_key = results["results"]["ec"]["run"].split("/")[1]
    assert "seed" not in json.loads((epath.Path(root) / "smoke" / "runs" / ec_key / "config.json").read_text())
    assert f"/bucket/runs/smoke/runs/{ec_key}/seed1/summary.json" in fake_gcs
    # Read back: finished runs are skipped, --collect_only rebuilds the same table, summary finds it.
    assert reproduce.reproduce(3, "smoke", root, seeds=2, log=quiet) == text and len(fake_train) == 4
    assert reproduce.reproduce(3, "smoke", root, collect_only=True, seeds=2) == text
    overview = summary.summarize(root, "smoke")
    assert overview.count("| not run |") == 10 and "| 3. token choice vs expert choice" in overview
    assert os.listdir(tmp_path) == []  # nothing under the working directory (no local gs:/bucket/...)


def test_a_sigterm_during_a_run_stops_the_sweep(tmp_path, monkeypatch):
    calls = []

    def preempted_train(config, workdir, stop_at_step=None, log=print):
        del config, stop_at_step, log
        calls.append(workdir)
        return types.SimpleNamespace(steps=1, preempted=True)

    monkeypatch.setattr(reproduce.loop, "train", preempted_train)
    with pytest.raises(reproduce.Preempted, match=r"sec03/tc seed 0: stopped by SIGTERM at step 1"):
        reproduce.reproduce(3, "smoke", str(tmp_path), seeds=2, log=lambda *a: None)
    assert len(calls) == 1  # no second run after the preempted one


def test_section_2_table_shows_where_each_variant_turned_up():
    section = registry.section(2)
    common = dict(steps=[96, 96], tokens_per_step=100, unique_tokens=200)  # 48 epochs
    results = {
        "ar_moe_8b1a": dict(common, validation_loss=[5.0, 5.2], best_validation_loss=[4.0, 4.2],
                            best_validation_step=[8, 12]),
        "dlm_moe_8b1a": dict(common, validation_loss=[4.5, 4.5], best_validation_loss=[4.5, 4.5],
                             best_validation_step=[96, 96]),
    }
    lines = reproduce.repeated_lines(section, results)
    assert "| ar_moe_8b1a | 200 | 48 | 4.1000 ± 0.1414 (2) | 5.0 | 1.0000 ± 0.0000 (2) |" in lines
    assert "| dlm_moe_8b1a | 200 | 48 | 4.5000 ± 0.0000 (2) | 48.0 | 0.0000 ± 0.0000 (2) |" in lines


def test_parse_sections():
    assert reproduce.parse_sections("all") == list(range(1, 12))
    assert reproduce.parse_sections("3,1") == [3, 1]
    with pytest.raises(ValueError, match="--section='x': expected 'all'"):
        reproduce.parse_sections("x")
    with pytest.raises(ValueError, match="section 12: expected one of"):
        reproduce.parse_sections("1,12")


@pytest.mark.slow
def test_seed_sets_init_data_order_and_masks_but_not_the_validation_rows(config, tmp_path, monkeypatch):
    config.train.steps = 2
    seen = {"validation": [], "first_batch": []}

    def record(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen[name].append(out[0] if name == "first_batch" else out)
            return out
        return wrapped

    monkeypatch.setattr(pipeline, "validation_batches", record("validation", pipeline.validation_batches))
    monkeypatch.setattr(pipeline, "train_dataset", record("first_batch", pipeline.train_dataset))
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config.seed = seed
        out[name] = loop.train(config, str(tmp_path / name), log=lambda *a: None)
    assert out["a"].train_losses == out["b"].train_losses  # same seed: bit-identical
    assert out["a"].final_validation_loss == out["b"].final_validation_loss
    assert out["a"].train_losses[1] != out["c"].train_losses[1]
    assert out["a"].final_validation_loss != out["c"].final_validation_loss
    assert not np.array_equal(seen["first_batch"][0], seen["first_batch"][2])  # data order
    for a, c in zip(seen["validation"][0], seen["validation"][2], strict=True):
        np.testing.assert_array_equal(a, c)  # same held-out rows (the split follows eval.seed)


def _table_rows(text):
    return [l for l in text.splitlines() if l.startswith("| ") and not l.startswith("| variant")]


@pytest.mark.slow
def test_reproduce_smoke_sections_with_two_seeds_then_upcycling_reusing_the_baseline(tmp_path, full):
    """Section 3 at 2 seeds (table, verdict, plot, collect_only, overview), then section 7 at 1 seed:
    its `ec` is section 3's seed 0 (not trained again), its dependency runs before the upcycled run.
    --full: then every other section at 2 seeds, each to a table with its verdict."""
    root = str(tmp_path)
    text = reproduce.reproduce(3, "smoke", root, seeds=2, log=lambda *a: None)
    out = tmp_path / "smoke" / "sec03"
    assert (out / "table.md").read_text() == text
    rows = _table_rows(text)
    assert [r.split("|")[1].strip() for r in rows] == ["tc", "ec"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"tc", "ec"} and results["seeds"] == 2
    ec = results["results"]["ec"]
    assert ec["steps"] == [3, 3] and ec["seeds"] == [0, 1]
    assert ec["validation_loss"][0] != ec["validation_loss"][1]  # the seeds are different runs
    mean = sum(ec["validation_loss"]) / 2
    std = abs(ec["validation_loss"][0] - ec["validation_loss"][1]) / 2 ** 0.5  # ddof 1, n 2, by hand
    assert f"| {mean:.4f} ± {std:.4f} (2) |" in next(r for r in rows if r.startswith("| ec "))
    assert "**Published:** same quality; EC +20% throughput" in text
    assert f"**Ours:** {results['outcome']} — ec same as tc: ec − tc = " in text
    assert results["outcome"] in ("agrees", "disagrees", "no measurable difference")
    assert ("**Rule:** a difference counts if it exceeds 2 standard errors of the difference of the means "
            "over 2 seeds") in text
    image = matplotlib.image.imread(out / "loss_curves.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    # A second call skips the finished runs; --collect_only reads them back to the same table.
    assert reproduce.reproduce(3, "smoke", root, seeds=2, log=lambda *a: None) == text
    assert reproduce.reproduce(3, "smoke", root, collect_only=True, seeds=2) == text
    overview = summary.summarize(root, "smoke")
    row = next(l for l in overview.splitlines() if l.startswith("| 3. token choice vs expert choice"))
    assert f"ec: {mean:.4f} ± {std:.4f} (2)" in row and f"**{results['outcome']}**" in row
    assert overview.count("| not run |") == 10
    seen = []
    reproduce.reproduce(7, "smoke", root, seeds=1, log=seen.append)
    started = [m.split(":")[0] for m in seen if m.startswith("[") and "sec07/" in m and "training" in m]
    assert started == ["[1/3] sec07/dense_source seed 0", "[3/3] sec07/ec_upcycle seed 0"]
    assert f"[2/3] sec07/ec seed 0: finished in {tmp_path / 'smoke' / ec['run'] / 'seed0'}, skipped" in seen
    assert any("upcycled from" in m and "runs/" in m for m in seen)
    for number in (1, 2, 4, 5, 6, 8, 9, 10, 11) if full else ():
        text = reproduce.reproduce(number, "smoke", root, seeds=2, log=lambda *a: None)
        results = json.loads((tmp_path / "smoke" / f"sec{number:02d}" / "results.json").read_text())
        assert results["seeds"] == 2 and (tmp_path / "smoke" / f"sec{number:02d}" / "table.md").read_text() == text
        for variant, result in results["results"].items():
            assert len(result["validation_loss"]) == 2 and f"| {variant} |" in text, (number, variant)
        if number != 2:  # section 2 is curves against epochs, without a verdict
            assert results["outcome"] in ("agrees", "disagrees", "no measurable difference"), number
    os.remove(tmp_path / "smoke" / ec["run"] / "seed1" / "summary.json")
    with pytest.raises(reproduce.errors.CheckpointError, match="sec03/ec seed 1: .* has not finished"):
        reproduce.reproduce(3, "smoke", root, collect_only=True, seeds=2)
