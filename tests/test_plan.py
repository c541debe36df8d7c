"""The TPU plan's arithmetic on hand-computed cases."""
import pytest

from openmoe2_jax import flops, plan
from openmoe2_jax.configs import scales


def test_topologies():
    assert plan.parse_topology("v5p-256")[1] == 128
    assert plan.parse_topology("v5litepod-64")[1] == 64
    assert plan.parse_topology("v4-32") == (plan.CHIPS["v4"], 16)
    with pytest.raises(ValueError, match="expected <type>-<N>"):
        plan.parse_topology("h100-8")


def test_plan_arithmetic_by_hand():
    config = scales.get("cpu")
    config.model.num_layers = 4   # 4 layers, d 64, 16 experts of 32, k 2, batch 8 x 128
    config.train.batch_size = 8
    chip = plan.Chip("toy", bf16_flops=1e12, hbm_bytes=2**30, hbm_bandwidth=1e11, ici_bandwidth=1e9,
                     cores_per_chip=1)
    flat = plan.plan(config, chip, 2, dict(data=2))
    moe = plan.plan(config, chip, 2, dict(expert=2))
    total = flops.param_counts(flops.model_config(config))["total"]
    routed = 4 * 3 * 64 * 32 * 16
    assert flat["params_per_chip"] == flat["total_params"] == total
    assert moe["params_per_chip"] == total - routed // 2          # routed experts split over expert=2
    assert moe["state_bytes_per_chip"] == 16 * (total - routed // 2)
    tokens = 8 * 128
    assert moe["flops_per_step"] == flops.train_flops_per_token(flops.model_config(config), 128) * tokens
    assert moe["compute_seconds"] == pytest.approx(moe["flops_per_step"] / 2e12)
    # 4 all-to-alls x 4 MoE layers x 1024 tokens x k 2 x d 64 x 2 bytes, half of it off-chip.
    assert moe["all_to_all_bytes_per_step"] == 4 * 4 * 1024 * 2 * 64 * 2 * 0.5 == 2_097_152
    assert moe["all_to_all_seconds"] == pytest.approx(2_097_152 / 2 / 1e9)
    assert flat["all_to_all_bytes_per_step"] == 0
    # Data parallel over 2: all-reduce 2 bytes x 2 (n-1)/n of every parameter.
    assert flat["allreduce_seconds"] == pytest.approx(2 * total * 2 * 0.5 / 1e9)
    assert flat["step_seconds_lower_bound"] == max(flat["compute_seconds"], flat["allreduce_seconds"])
    sharded = plan.plan(config, chip, 2, dict(fsdp=2))
    assert sharded["fsdp_allgather_seconds"] == pytest.approx(3 * 2 * sharded["params_per_chip"] * 2 * 0.5 / 1e9)
    tokens_chip = 512
    transient = 8 * 4 * 128 * tokens_chip  # one layer's fp32 scores + probabilities, 4 heads, seq 128
    assert flat["activation_bytes_full_remat"] == 4 * tokens_chip * 64 * 2 + transient
    assert flat["activation_bytes_no_remat"] == pytest.approx(4 * tokens_chip * 64 * 34 + transient)
    # Evaluation: float32 parameters only (no AdamW, no gradients) + scores and the logits of a batch.
    vocab = flops.model_config(config).vocab_size
    assert moe["eval_param_bytes_per_chip"] == 4 * (total - routed // 2)
    assert flat["eval_activation_bytes_per_chip"] == transient + tokens_chip * vocab * 4


def test_suggestion_fits_and_the_paper_model_needs_sharding():
    config = scales.get("paper")
    chip, chips = plan.parse_topology("v5p-256")
    best = plan.suggest(config, chip, chips)
    assert best is not None and best["fits_full_remat"]
    assert best["state_bytes_per_chip"] + best["activation_bytes_full_remat"] <= chip.hbm_bytes
    one_chip = plan.plan(config, chip, 1, {})
    assert one_chip["state_bytes_per_chip"] == 16 * 8_151_229_440 and not one_chip["fits_full_remat"]
    assert one_chip["eval_param_bytes_per_chip"] == 4 * 8_151_229_440  # 30.4 GiB: evaluation fits on one v5p
    assert "evaluation per chip" in plan.report(best)
