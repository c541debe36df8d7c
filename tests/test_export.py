"""Export: a run's parameters as safetensors + config.json, read back bit-identically, and the NumPy
reference forward pass (from the files alone) equal to the JAX model's logits for every model kind."""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from safetensors import safe_open

from openmoe2_jax.export import ExportError, export_workdir, layout, load_export, reference, write_export
from openmoe2_jax.models.transformer import ModelConfig, Transformer, with_groups
from openmoe2_jax.runtime import restore
from openmoe2_jax.runtime.checkpoint import CheckpointError
from openmoe2_jax.train import loop
from tests.conftest import small_config, tiny_bpe_config

NUM_IDS = 63                      # a small vocabulary: 63 ids + mask id 63, 128 embedding rows
TOKENIZER = dict(name="test", sha256="0" * 64, num_ids=NUM_IDS, eot_id=NUM_IDS - 1, mask_id=NUM_IDS)
B, S, GROUP = 4, 16, 16           # each forward pass: 64 tokens = 4 batch-level routing groups of 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every kind the exporter must describe; each is the small test config with these overrides.
KINDS = {
    "dense_diffusion": dict(model=dict(ffn="dense")),
    "dense_ar_gqa": dict(model=dict(ffn="dense", num_heads=4, num_kv_heads=2), objective=dict(kind="ar")),
    "ec_batch": dict(),
    "ec_sequence_sigmoid_scaled": dict(moe=dict(ec_group="sequence", gate="sigmoid", scaling_factors=True)),
    "tc_dropless_ar_scaled": dict(moe=dict(routing="tc", scaling_factors=True), objective=dict(kind="ar")),
    "tc_capacity": dict(moe=dict(routing="tc", tc_capacity_factor=1.0)),
    "first_dense_layer_pre_softmax": dict(model=dict(num_layers=3), moe=dict(
        first_dense_layers=1, dense_mlp_dim=48, gate="pre_softmax", ec_capacity_factor=1.5)),
    "router_gated_shared_scaled": dict(moe=dict(shared_gating="router", scaling_factors=True)),
}


def _model(kind: str, tokens_per_group: int = GROUP):
    """(ModelConfig routing B*S tokens in groups of `tokens_per_group`, objective, random float32 params
    of its shapes: weights N(0, 0.3^2), large enough that routing and every nonlinearity matter, norm
    scales uniform in [0.5, 1.5])."""
    c = small_config()
    c.model.update(dtype="float32")
    for section, values in KINDS[kind].items():
        c[section].update(values)
    cfg = ModelConfig.from_config(c, NUM_IDS, batch_shards=B * S // tokens_per_group)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: (rng.uniform(0.5, 1.5, a.shape) if path[-1].key == "scale" else
                         rng.normal(0, 0.3, a.shape)).astype(np.float32), restore.abstract_params(cfg))
    return cfg, c.objective.kind, params


def _jax_logits(cfg, params, tokens):
    """The JAX model's logits (op by op: on 2 CPU cores cheaper than compiling each model)."""
    return np.asarray(Transformer(cfg).apply({"params": params}, tokens))


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(0, NUM_IDS + 1, (B, S))   # mask id included


def _close(ours, theirs):
    """(max |difference|, max |difference| / max |logit|), asserting rtol 1e-4 (atol 1e-4 x the scale)."""
    scale = float(np.abs(theirs).max())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)
    diff = float(np.abs(ours - theirs).max())
    return diff, diff / scale


@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_forward_from_the_files_equals_the_jax_model(kind, tmp_path):
    cfg, objective, params = _model(kind)
    write_export(str(tmp_path), cfg, objective, params, TOKENIZER, tokens_per_group=GROUP)
    config, weights = reference.load(str(tmp_path))
    tokens = _tokens()
    ours, theirs = reference.forward(config, weights, tokens), _jax_logits(cfg, params, tokens)
    diff = _close(ours, theirs)
    print(f"{kind}: max |reference - jax| = {diff[0]:.2e} ({diff[1]:.2e} of max |logit|)")
    assert ours.shape == (B, S, cfg.vocab_size) and ours.dtype == np.float32
    if cfg.causal:  # causal: a later token never changes an earlier logit
        changed = tokens.copy()
        changed[:, -1] = (changed[:, -1] + 1) % NUM_IDS
        np.testing.assert_array_equal(reference.forward(config, weights, changed)[:, :-1], ours[:, :-1])
    if cfg.moe is not None and config["moe"]["routing_level"] == "batch":
        # The recorded group size is part of the function: one group of all 64 tokens routes otherwise.
        one_group = reference.forward(config, weights, tokens, tokens_per_group=B * S)
        assert np.abs(one_group - ours).max() > 1e-3 * np.abs(ours).max()
        if kind == "ec_batch":  # and routes as the JAX model does with one group
            _close(one_group, _jax_logits(with_groups(cfg, 1), params, tokens))
    if kind == "tc_capacity":  # the capacity drops assignments: dropless TC gives other logits
        dropless_config = dict(config, moe=dict(config["moe"], routing="tc_dropless"))
        dropless = reference.forward(dropless_config, weights, tokens)
        assert np.abs(dropless - ours).max() > 1e-3 * np.abs(ours).max()


def test_config_json_describes_the_routing(tmp_path):
    cfg, objective, params = _model("router_gated_shared_scaled")
    config = write_export(str(tmp_path), cfg, objective, params, TOKENIZER, tokens_per_group=GROUP)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written == {k: v for k, v in config.items() if k != "files"}
    m = config["moe"]
    assert (m["routing"], m["routing_level"], m["tokens_per_group"], m["gate"]) == (
        "ec", "batch", GROUP, "softmax")
    assert (m["shared_experts"], m["num_shared_experts"], m["num_experts"], m["top_k"]) == (
        "router_gated", 2, 4, 2)
    assert m["scaling_table"] == list(cfg.moe.scaling) and len(m["scaling_table"]) == 4 + 1
    assert m["scaling_factor"] is None and m["capacity_factor"] == 1.0 and "floor" in m["capacity_rule"]
    assert (config["objective"], config["attention"], config["tokenizer"]["mask_id"]) == (
        "diffusion", "bidirectional", NUM_IDS)
    tc = layout.export_config(_model("tc_dropless_ar_scaled")[0], "ar", TOKENIZER, "float32")
    assert (tc["moe"]["routing"], tc["moe"]["routing_level"], tc["moe"]["tokens_per_group"]) == (
        "tc_dropless", "token", None)
    assert tc["moe"]["scaling_factor"] > 1 and tc["attention"] == "causal"
    with pytest.raises(ExportError, match="batch-level routed model needs the tokens per routing group"):
        layout.export_config(cfg, objective, TOKENIZER, "float32")


def test_round_trip_is_bit_identical_and_single_file_is_plain_safetensors(tmp_path):
    cfg, objective, params = _model("first_dense_layer_pre_softmax")
    write_export(str(tmp_path), cfg, objective, params, TOKENIZER, tokens_per_group=GROUP)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    config, loaded = load_export(str(tmp_path))
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True), loaded, params)
    # The safetensors package's own loader reads the same tensors under the documented names.
    plain = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(plain["layers.2.moe.experts.w_up"], params["layer_2"]["moe"]["w_up"])
    np.testing.assert_array_equal(plain["layers.0.ffn.w_down"], params["layer_0"]["ffn"]["w_down"])
    assert plain["layers.1.moe.experts.w_down"].shape == (4, 16, 32)       # experts first: [E, f, d]
    # ... and the model built from config.json alone computes the same logits.
    rebuilt = with_groups(layout.model_config(config), B * S // GROUP)
    np.testing.assert_array_equal(_jax_logits(rebuilt, loaded, _tokens()),
                                  _jax_logits(cfg, params, _tokens()))


def test_bfloat16_export_round_trips_within_bfloat16_rounding(tmp_path):
    cfg, objective, params = _model("tc_capacity")
    write_export(str(tmp_path), cfg, objective, params, TOKENIZER, dtype="bfloat16",
                 tokens_per_group=GROUP)
    with open(tmp_path / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    header_bytes = len(json.dumps(header, separators=(",", ":")))
    data = os.path.getsize(tmp_path / "model.safetensors") - 8 - header_bytes
    assert 0 <= data - sum(p.nbytes for p in jax.tree.leaves(params)) // 2 < 8   # 2 bytes a weight (+ pad)
    config, stored = load_export(str(tmp_path))
    assert config["dtype"] == "bfloat16" and {str(p.dtype) for p in jax.tree.leaves(stored)} == {"bfloat16"}
    _, loaded = load_export(str(tmp_path), dtype="float32")
    for a, p in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        assert a.dtype == np.float32
        rounded = jnp.asarray(p).astype(jnp.bfloat16).astype(jnp.float32)          # XLA's rounding
        np.testing.assert_array_equal(a, np.asarray(rounded))
        assert np.all(np.abs(a - p) <= 2.0 ** -8 * np.abs(p))                # bf16: 8 significant bits
    # The reference reads the same rounded weights the JAX model then uses.
    ref_config, weights = reference.load(str(tmp_path))
    _close(reference.forward(ref_config, weights, _tokens()), _jax_logits(cfg, loaded, _tokens()))


def test_sharded_export_has_every_tensor_in_exactly_one_shard(tmp_path):
    cfg, objective, params = _model("router_gated_shared_scaled")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    write_export(str(single), cfg, objective, params, TOKENIZER, tokens_per_group=GROUP)
    limit = 20_000
    result = write_export(str(sharded), cfg, objective, params, TOKENIZER, max_shard_bytes=limit,
                          tokens_per_group=GROUP)
    shards = sorted(f for f in os.listdir(sharded) if f.endswith(".safetensors"))
    count = len(shards)
    assert count > 2 and shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert result["files"] == shards + ["model.safetensors.index.json"]
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    flat = layout.flatten(params)
    assert sorted(index["weight_map"]) == sorted(flat)
    assert index["metadata"]["total_size"] == sum(a.size * 4 for a in flat.values())
    seen = []
    for shard in shards:
        with safe_open(str(sharded / shard), framework="np") as f:
            names = list(f.keys())
            arrays = {n: f.get_tensor(n) for n in names}
        seen += names
        assert all(index["weight_map"][n] == shard for n in names)
        data = sum(a.nbytes for a in arrays.values())
        assert data <= limit or len(names) == 1
        assert os.path.getsize(sharded / shard) > data
        for n, a in arrays.items():
            np.testing.assert_array_equal(a, flat[n])
    assert sorted(seen) == sorted(flat)                                       # each exactly once
    _, loaded = load_export(str(sharded))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True), loaded, params)
    np.testing.assert_array_equal(reference.forward(*reference.load(str(sharded)), _tokens()),
                                  reference.forward(*reference.load(str(single)), _tokens()))
    # An index that disagrees with its shards is refused, naming the shard.
    index["weight_map"]["head"] = shards[0]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ExportError, match=r"model-000\d\d-of-.*holds other tensors than"):
        load_export(str(sharded))


def test_an_export_read_with_another_kinds_config_is_refused(tmp_path):
    moe_dir, dense_dir = tmp_path / "moe", tmp_path / "dense"
    write_export(str(moe_dir), *_model("ec_batch"), TOKENIZER, tokens_per_group=GROUP)
    dense_cfg, objective, dense_params = _model("dense_diffusion")
    write_export(str(dense_dir), dense_cfg, objective, dense_params, TOKENIZER)
    with pytest.raises(ExportError, match=r"layers\.0\.ffn\.w_gate: missing.*with the model expected"):
        load_export(str(moe_dir), expect=dense_cfg)
    shutil.copyfile(dense_dir / "config.json", moe_dir / "config.json")       # MoE tensors, dense config
    with pytest.raises(ExportError, match=r"layers\.0\.ffn\.w_gate: missing.*compared with its config\.json"):
        load_export(str(moe_dir))
    with pytest.raises(ValueError, match=r"layers\.0\.ffn\.w_gate: missing"):
        reference.load(str(moe_dir))
    (moe_dir / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ExportError, match="is not an openmoe2_jax.export config"):
        load_export(str(moe_dir))
    with pytest.raises(ExportError, match="has no config.json: not an export directory"):
        load_export(str(tmp_path))
    with pytest.raises(ExportError, match="is not an empty directory"):
        write_export(str(dense_dir), dense_cfg, objective, dense_params, TOKENIZER)


def test_name_map_is_the_table_in_docs_export_md():
    with open(os.path.join(ROOT, "docs", "export.md")) as f:
        table = re.findall(r"^\| `([a-z_0-9/{}]+)` \| `([a-z_0-9.{}]+)` \|", f.read(), re.M)
    assert len(table) >= 20
    for ours, exported in table:
        ours, exported = ours.replace("{i}", "7"), exported.replace("{i}", "7")
        assert layout.export_name(ours) == exported and layout.flax_path(exported) == ours
    documented = {e.replace("{i}", str(i)) for _, e in table for i in range(3)}
    for kind in ("dense_ar_gqa", "first_dense_layer_pre_softmax", "router_gated_shared_scaled", "ec_batch"):
        assert set(layout.flatten(_model(kind)[2])) <= documented, kind


# ----- a trained workdir, through the command line

def _trained_workdir(tmp_path):
    """A 2-step run of a 1-layer batch-level EC diffusion MoE with a bpe:300 vocabulary on a small corpus."""
    words = "and the king went forth unto the city of the land with his sons and priests".split()
    c = tiny_bpe_config(tmp_path, words, rows=200)
    workdir = tmp_path / "run"
    loop.train(c, str(workdir), log=lambda *a: None)
    return workdir


@pytest.mark.slow
def test_command_line_exports_a_trained_run(tmp_path):
    workdir, out = _trained_workdir(tmp_path), tmp_path / "export"
    run = subprocess.run(
        [sys.executable, "-m", "openmoe2_jax.export", f"--workdir={workdir}", f"--out={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    print(f"export of the trained run: {summary['bytes']:,} bytes in {summary['seconds']} s")
    assert (summary["step"], summary["files"], summary["tokenizer"]) == (2, ["model.safetensors"], "bpe:300")
    # The vocabulary travels with the export; the routing groups are the ones the run trained with
    # (8 fake devices: 8 groups of 8 x 32 / 8 tokens).
    assert sorted(os.listdir(out / "tokenizer")) == ["bpe_300.json", "bpe_300.tiktoken"]
    saved = (workdir / "tokenizer" / "bpe_300.tiktoken").read_bytes()
    assert (out / "tokenizer" / "bpe_300.tiktoken").read_bytes() == saved
    config, params = load_export(str(out))
    trained = restore.load(str(workdir))                 # params only, restored the other way
    assert (config["tokenizer"]["sha256"], config["tokenizer"]["eot_id"]) == (trained.tokenizer.sha256, 300)
    assert (config["moe"]["tokens_per_group"], config["moe"]["trained_groups_per_step"]) == (32, 8)
    assert config["source"]["step"] == 2 and config["source"]["run_config"]["data"]["tokenizer"] == "bpe:300"
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b), strict=True),
                 params, trained.params)
    assert set(config["tokenizer"]["files"]) == {"tokenizer/bpe_300.json", "tokenizer/bpe_300.tiktoken"}
    tokens = np.random.default_rng(1).integers(0, 302, (2, 32))
    model_cfg = with_groups(trained.model_cfg, 2)                   # 64 tokens = 2 groups of 32
    diff = _close(reference.forward(*reference.load(str(out)), tokens),
                  _jax_logits(model_cfg, trained.params, tokens))
    print(f"trained EC run: max |reference - jax| = {diff[0]:.2e} ({diff[1]:.2e} of max |logit|)")
    # Params-only restore: the same values as the full state, as host NumPy arrays.
    only = restore.load_params(str(workdir))
    assert isinstance(only.params["layer_0"]["moe"]["w_up"], np.ndarray)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b), strict=True),
                 only.params, trained.params)
    assert only.routing == dict(groups=8, tokens_per_group=32)
    with pytest.raises(ExportError, match="is not an empty directory"):
        export_workdir(str(workdir), str(out))
    # A workdir without a checkpoint, or not a workdir at all, is refused by name.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(workdir / "config.json", bare / "config.json")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        export_workdir(str(bare), str(tmp_path / "x"))
    with pytest.raises(CheckpointError, match="has no config.json: not a training workdir"):
        export_workdir(str(tmp_path / "nothing"), str(tmp_path / "y"))
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")
