"""Experiment IDs, FLOPs accounting and the table reproduction."""
import json
import os

import matplotlib.image
import pytest

from openmoe2_jax import flops, validation
from openmoe2_jax.configs import scales
from openmoe2_jax.experiments import registry, reproduce


@pytest.mark.parametrize("scale", scales.SCALES)
def test_every_registered_id_builds_a_valid_config(scale):
    ids = registry.all_ids()
    assert len(ids) == 32 and len(registry.SECTION_MODULES) == 11
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


@pytest.mark.parametrize("scale", ["paper", "small", "tiny"])
@pytest.mark.parametrize("routing", ["ec", "tc"])
def test_flops_matched_dense_has_the_moe_active_flops(scale, routing):
    config = scales.get(scale)
    config.moe.routing = routing
    moe = flops.train_flops_per_token(flops.model_config(config), config.data.seq_len)
    dense_cfg = flops.matched_dense(config, "flops")
    dense = flops.train_flops_per_token(flops.model_config(dense_cfg), config.data.seq_len)
    assert abs(dense - moe) / moe < 0.01
    params = flops.param_counts(flops.model_config(flops.matched_dense(config, "params")))["total"]
    total = flops.param_counts(flops.model_config(config))["total"]
    assert abs(params - total) / total < 0.001


def test_sec02_keeps_the_repeated_data_shape_at_tiny_scale():
    c = registry.get_config("sec02/dlm_moe_8b1a", "tiny")
    epochs = c.train.steps * c.train.batch_size * c.data.seq_len / c.data.max_train_tokens
    assert c.data.max_train_tokens <= 20_000 and epochs >= 10
    assert registry.get_config("sec02/ar_moe_8b1a", "tiny").moe.routing == "tc"
    paper = registry.get_config("sec02/ar_dense_1b", "paper")
    assert paper.data.max_train_tokens == 1_000_000_000 and paper.data.num_epochs == 96


def _table_rows(text):
    return [l for l in text.splitlines() if l.startswith("| ") and not l.startswith("| variant")]


@pytest.mark.slow
def test_reproduce_smoke_section_writes_table_and_plot_and_collect_only_matches(tmp_path):
    root = str(tmp_path)
    text = reproduce.reproduce(3, "smoke", root, log=lambda *a: None)
    out = tmp_path / "smoke" / "sec03"
    assert (out / "table.md").read_text() == text
    rows = _table_rows(text)
    assert [r.split("|")[1].strip() for r in rows] == ["tc", "ec"]
    assert "**Published:** same quality; EC +20% throughput" in text
    assert "**Agrees with the paper's direction?**" in text
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"tc", "ec"} and results["results"]["ec"]["steps"] == 3
    image = matplotlib.image.imread(out / "loss_curves.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    # A second call skips the finished runs; --collect_only reads them back to the same table.
    assert reproduce.reproduce(3, "smoke", root, log=lambda *a: None) == text
    assert reproduce.reproduce(3, "smoke", root, collect_only=True) == text
    from openmoe2_jax.experiments import summary
    overview = summary.summarize(root, "smoke")
    row = next(l for l in overview.splitlines() if l.startswith("| 3. token choice vs expert choice"))
    assert f"ec: {results['results']['ec']['validation_loss']:.4f}" in row
    assert overview.count("| not run |") == 10
    os.remove(tmp_path / "smoke" / "sec03" / "ec" / "summary.json")
    with pytest.raises(reproduce.errors.CheckpointError, match="has not finished"):
        reproduce.reproduce(3, "smoke", root, collect_only=True)


@pytest.mark.slow
def test_reproduce_runs_dependencies_first_for_upcycling(tmp_path):
    seen = []
    reproduce.reproduce(7, "smoke", str(tmp_path), log=seen.append)
    started = [m.split(":")[0] for m in seen if m.startswith("sec07/") and "training" in m]
    assert started[0] == "sec07/dense_source"
    assert any("upcycled from" in m for m in seen)
