"""Checkpoints: damaged ones are set aside with a warning, and a state restores onto another mesh; their
directory, local or gs://, as orbax is given it."""
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from openmoe2_jax.data.tokenizer import get_tokenizer
from openmoe2_jax.models.transformer import ModelConfig, Transformer
from openmoe2_jax.parallel import sharding
from openmoe2_jax.runtime import checkpoint, optimizer, paths, state as state_lib
from openmoe2_jax.train import loop


def _largest_file(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


# orbax's read coroutines, cut off when the damaged checkpoint fails to restore, are closed later (by
# the garbage collector, or after their event loop has closed): harmless, reported as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(config, tmp_path):
    reference = loop.train(config, str(tmp_path / "ref"), log=lambda *a: None)
    workdir = tmp_path / "run"
    loop.train(config, str(workdir), stop_at_step=6, log=lambda *a: None)  # checkpoints at 3 and 6
    victim = _largest_file(workdir / "checkpoints" / "6" / "state")
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) // 2)
    damaged = (os.path.relpath(victim, workdir / "checkpoints" / "6"), os.path.getsize(victim))
    messages = []
    resumed = loop.train(config, str(workdir), log=messages.append)
    assert any("WARNING" in m and "falling back" in m for m in messages)
    assert resumed.resumed_from == 3
    assert {s: resumed.train_losses[s] for s in (4, 5, 6)} == {s: reference.train_losses[s] for s in (4, 5, 6)}
    # The damaged checkpoint is kept, renamed, not deleted; training went on to write a good step 6.
    assert os.path.getsize(workdir / "checkpoints" / "6.corrupt" / damaged[0]) == damaged[1]
    assert max(resumed.train_losses) == reference.steps


def test_partially_written_checkpoint_is_ignored(config, tmp_path):
    workdir = tmp_path / "run"
    loop.train(config, str(workdir), stop_at_step=3, log=lambda *a: None)
    # Each checkpoint records how batch-level EC grouped the tokens: the mesh's 8 batch shards
    # (8 fake devices, data = -1) over 8 x 32 tokens per step.
    ckpts = checkpoint.Checkpoints(str(workdir / "checkpoints"), keep=None, async_save=False, read_only=True)
    assert ckpts.recorded_routing(3) == dict(groups=8, tokens_per_group=32)
    assert ckpts.recorded_vocabulary(3)["tokenizer"] == "cl100k_base"
    # What an interrupted async save leaves behind: orbax's temporary directory.
    os.makedirs(workdir / "checkpoints" / "6.orbax-checkpoint-tmp-123" / "state")
    resumed = loop.train(config, str(workdir), log=lambda *a: None)
    assert resumed.resumed_from == 3 and max(resumed.train_losses) == config.train.steps


def test_state_saved_on_one_mesh_restores_on_another(config, tmp_path):
    tok = get_tokenizer()
    model = Transformer(ModelConfig.from_config(config, tok.num_ids))
    tx = optimizer.make(config.train)
    init = state_lib.init_fn(model, tx, config.seed, config.train.batch_size, config.data.seq_len)
    ckpts = checkpoint.Checkpoints(str(tmp_path / "ckpt"), keep=2, async_save=False)
    data = iter(__import__("grain").MapDataset.source(list(range(10))).to_iter_dataset())

    def on_mesh(shape):
        mesh = sharding.make_mesh(shape)
        with jax.sharding.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            abstract, shardings = state_lib.abstract_state(init, mesh)
        return mesh, abstract, shardings

    mesh_a, _, shardings_a = on_mesh(dict(data=2, fsdp=4, expert=1, tensor=1))
    with jax.sharding.set_mesh(mesh_a), nn.logical_axis_rules(sharding.RULES):
        state = state_lib.create(init, shardings_a)
    ckpts.save(1, state, data)
    ckpts.wait()
    mesh_b, abstract_b, _ = on_mesh(dict(data=2, fsdp=1, expert=4, tensor=1))
    restored = ckpts.restore(1, abstract_b, data)
    w = restored.params["layer_0"]["moe"]["w_gate"]
    assert w.sharding.mesh.shape["expert"] == 4 and w.addressable_shards[0].data.shape[0] == config.moe.num_experts // 4
    d = config.model.d_model
    assert state.params["embedding"].addressable_shards[0].data.shape[1] == d // 4     # fsdp = 4
    assert restored.params["embedding"].addressable_shards[0].data.shape[1] == d      # fsdp = 1
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state.params, restored.params)


def test_workdir_paths_keep_a_bucket_url_and_make_a_local_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bucket = paths.absolute("gs://bucket/runs/x")
    assert str(bucket).startswith("gs://bucket/runs/x")
    assert str(bucket / "checkpoints") == "gs://bucket/runs/x/checkpoints"
    assert str(paths.absolute(bucket)) == "gs://bucket/runs/x"  # an epath.Path of a URL too
    assert str(paths.absolute("runs/x")) == os.path.join(os.getcwd(), "runs", "x")  # os.path.abspath's
    assert str(paths.absolute("/abs/runs/../x")) == "/abs/x"
    assert paths.is_url("gs://b") and not paths.is_url("runs/gs:") and not paths.is_url(tmp_path)
    # A local checkpoint directory is made absolute before orbax sees it (and checked: a file is refused).
    ckpts = checkpoint.Checkpoints("ckpt", keep=1, async_save=False)
    assert str(ckpts.directory) == os.path.join(os.getcwd(), "ckpt")
    ckpts.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match="exists and is not a directory"):
        checkpoint.Checkpoints("file", keep=1, async_save=False)


@pytest.mark.parametrize("num_groups,group_tokens", [(4, 8 * 32 // 4), (0, 0)])
def test_a_config_json_with_old_field_names_loads_under_the_new_ones(config, tmp_path, num_groups, group_tokens):
    """moe.num_groups (groups per step; 0 = one per batch shard), saved by older versions, is read as
    moe.group_tokens (tokens per group; 0 = one batch shard's tokens); moe.router as moe.gate and
    moe.z_loss as moe.z_loss_coef; an unknown field is refused."""
    from openmoe2_jax.runtime import restore  # pylint: disable=import-outside-toplevel
    saved = config.to_dict()
    for new in ("group_tokens", "gate", "z_loss_coef"):
        del saved["moe"][new]
    saved["moe"].update(num_groups=num_groups, router="sigmoid", z_loss=0.25)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = restore.load_config(tmp_path)
    assert loaded.moe.group_tokens == group_tokens and "num_groups" not in loaded.moe
    assert (loaded.moe.gate, loaded.moe.z_loss_coef) == ("sigmoid", 0.25)
    assert "router" not in loaded.moe and "z_loss" not in loaded.moe
    assert loaded.model.d_model == config.model.d_model
    saved["moe"]["no_such_field"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(checkpoint.CheckpointError, match="config.moe.no_such_field, which this version does not know"):
        restore.load_config(tmp_path)
