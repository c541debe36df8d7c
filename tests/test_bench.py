"""The performance benchmark's arithmetic and outputs (speed goals live in the benchmark, not here)."""
import json
import subprocess
import sys

import pytest

from openmoe2_jax import bench, flops
from openmoe2_jax.models.transformer import ModelConfig


def test_cpu_benchmark_rows_ratios_and_table(tmp_path):
    results = bench.run(shapes=("cpu",), variants=("dense", "ec"), repeats=1, warmup=0,
                        remat_shape=None, topk=False, profile_dir=str(tmp_path), data=False,
                        log=lambda *_: None)
    assert results["backend"] == "cpu" and results["device_count"] == 8
    ceiling = results["ceilings"]["float32"]
    assert ceiling["flops_per_second"] == pytest.approx(2 * 2048 ** 3 / ceiling["seconds"])
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"dense", "ec"}
    for variant, r in rows.items():
        config, num_ids = bench.shape_config("cpu", variant)
        model_cfg = ModelConfig.from_config(config, num_ids)
        assert r["flops_per_token"] == flops.train_flops_per_token(model_cfg, 128)
        assert r["tokens_per_second"] == pytest.approx(bench.SHAPES["cpu"] * 128 / r["step_seconds"])
        assert r["achieved_flops_per_second"] == pytest.approx(r["flops_per_token"] * r["tokens_per_second"])
        assert r["mfu"] == pytest.approx(r["achieved_flops_per_second"] / ceiling["flops_per_second"])
        # XLA's count of the compiled step agrees with the model count (no hidden dense expansion)
        assert r["hlo_flops_per_token"] == pytest.approx(r["flops_per_token"], rel=0.1)
        assert 1.5 < r["temp_ratio_2x_batch"] <= 2.3  # activation memory linear in tokens
        assert r["peak_rss_bytes"] > r["temp_bytes"] > 0
        # the profile names XLA's ops, the most expensive first, within the step's wall time
        times = [top["seconds"] for top in r["top_ops"]]
        assert times == sorted(times, reverse=True) and 0 < times[0]
        assert all(isinstance(top["op"], str) and top["op"] for top in r["top_ops"])
    # matched dense: the same FLOPs/token but the router's (6 x d_model x experts per layer; 1% at d 64)
    c = bench.shape_config("cpu", "ec")[0]
    router = 6 * c.model.d_model * c.moe.num_experts * c.model.num_layers
    assert rows["ec"]["flops_per_token"] == rows["dense"]["flops_per_token"] + router
    ratios = results["ratios"]["cpu"]
    assert ratios["ec_mfu_over_dense_mfu"] == pytest.approx(rows["ec"]["mfu"] / rows["dense"]["mfu"])
    ffn = {r["variant"]: r for r in results["ffn"]}
    # the same expert FLOPs as the matched dense FFN, plus the router (d_model x experts)
    assert ffn["ec"]["flops_per_token"] == ffn["dense"]["flops_per_token"] + 6 * 64 * 16
    table = bench.markdown(results)
    assert table.count("| cpu | dense | float32 | 16 x 128 |") == 1 and "| cpu | ec |" in table
    assert json.loads(json.dumps(results)) == results


def test_the_input_pipeline_bench_loads_one_hosts_batches_and_states_the_pod_need(monkeypatch):
    loader = bench.measure_data(seq_len=256, global_batch=64, processes=4, tokens=64 * 256 * 3, batches=5)
    assert loader["tokens_per_batch"] == 64 // 4 * 256 and loader["tokens_per_second"] > 0
    assert loader["tokens_per_second"] == pytest.approx(loader["tokens_per_batch"] / loader["seconds_per_batch"])
    need = bench.pod_need("v5p-256")                      # 128 chips, 32 hosts of 4
    assert need["hosts"] == 32 and need["tokens_per_host_step"] == 1024 * 4096 // 32
    assert need["tokens_per_second_per_host"] == pytest.approx(
        need["tokens_per_host_step"] / need["step_seconds_lower_bound"])
    monkeypatch.setattr(bench, "measure_data", lambda: loader)
    monkeypatch.setattr(bench, "pod_need", lambda: need)
    results = bench.run(shapes=(), variants=(), remat_shape=None, topk=False, log=lambda *_: None)
    assert results["data"]["ratio"] == pytest.approx(loader["tokens_per_second"] / need["tokens_per_second_per_host"])
    assert "| prepared shard -> grain -> shuffled rows, 1 of 4 | 16 x 256 |" in bench.markdown(results)


def test_a_step_too_big_for_the_machine_is_skipped_with_the_memory_it_needs(monkeypatch):
    monkeypatch.setattr(bench, "_physical_memory_bytes", lambda: 2 ** 20)
    config, num_ids = bench.shape_config("cpu", "dense")
    row = bench.measure(config, num_ids, repeats=1, warmup=0, ceiling_flops=1e11)
    assert "GiB of temporaries" in row["skipped"] and "step_seconds" not in row


def test_tc_variants_are_capacity_one_and_dropless():
    tc, _ = bench.shape_config("small", "tc")
    dropless, _ = bench.shape_config("small", "tc_dropless")
    assert (tc.moe.routing, tc.moe.tc_capacity_factor) == ("tc", 1.0)
    assert (dropless.moe.routing, dropless.moe.tc_capacity_factor) == ("tc", 0.0)
    peer, num_ids = bench.shape_config("peer", "ec")
    assert (peer.model.vocab_size, num_ids, peer.moe.num_experts, peer.moe.num_shared_experts) == (32768, 32767, 8, 0)


@pytest.mark.slow
def test_cli_rejects_an_unknown_shape_before_compiling():
    out = subprocess.run([sys.executable, "-m", "openmoe2_jax.bench", "--shapes=huge"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "--shapes: 'huge' is not one of" in out.stderr and "Traceback" not in out.stderr
