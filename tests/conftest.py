"""Tests run on the CPU with 8 fake devices, so meshes, shardings and collectives are real.

One XLA compilation cache serves the whole test session: a directory made here by the first process
that imports this file (pytest itself, before it starts any xdist worker) and inherited through the
environment by the workers and by every subprocess a test starts. Many tests compile the same small
programs; each is compiled once per session instead of once per test. The cache is keyed by the
compiled program, so it cannot hand one test another's code; it is deleted when the session ends.
"""
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="openmoe2_jax_test_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

from openmoe2_jax.configs import default  # noqa: E402


def small_config():
    """A config that trains in well under a second per step on 2 CPU cores."""
    c = default.get_config()
    c.data.tokenizer = "cl100k_base"  # the paper tokenizer; tests that need a trained BPE ask for one
    c.model.update(num_layers=2, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=64)
    c.moe.update(num_experts=4, num_shared_experts=2, expert_mlp_dim=16, top_k=2)  # active width 64
    c.objective.update(random_length_buckets=(8, 16, 24), masked_head=0.0)  # the reference head (the
    # masked one equals it: tests/test_objectives.py; the default's own run: tests/test_main_command.py)
    c.data.update(seq_len=32)
    c.train.update(steps=6, batch_size=8, warmup_steps=2, learning_rate=1e-2)  # not the default's tuning
    c.eval.update(every_steps=0, num_batches=2, compressors=())
    c.checkpoint.update(every_steps=3, keep=3, async_save=False)
    c.log_every_steps = 1
    return c


def tiny_bpe_config(directory, words, rows: int):
    """small_config on a corpus of `rows` random 60-word rows drawn from `words` (written to
    directory/corpus.jsonl), with a bpe:300 vocabulary, 1 layer, 2 steps and a checkpoint at the end."""
    import json  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    corpus = directory / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) for _ in range(rows)))
    c = small_config()
    c.data.update(source="jsonl", paths=(str(corpus),), tokenizer="bpe:300")
    c.model.num_layers = 1
    c.train.update(steps=2, warmup_steps=1)
    c.eval.num_batches = 1
    c.checkpoint.every_steps = 2
    return c


@pytest.fixture
def config():
    return small_config()


@pytest.fixture
def fake_gcs(monkeypatch, tmp_path):
    """gs:// in memory, for code written for a bucket to run offline: etils.epath's gs:// backend
    (fsspec's `gcs` filesystem, gcsfs once the `gcs` extra is installed) is replaced by an in-memory
    filesystem, and epath is kept from TensorFlow's gfile (which it prefers when TensorFlow is
    installed). Yields the bucket's contents, {"/BUCKET/path": file}. The working directory is
    tmp_path, where a URL mangled into a local path (`gs:/BUCKET/...`) would show."""
    import importlib  # pylint: disable=import-outside-toplevel
    from etils.epath import backend, gpath  # pylint: disable=import-outside-toplevel
    from fsspec.implementations.memory import MemoryFileSystem  # pylint: disable=import-outside-toplevel

    class Bucket(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store, pseudo_dirs = {}, [""]  # this test's own

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(str(path).removeprefix("gs://"))

    monkeypatch.setitem(importlib.import_module("fsspec.registry")._registry, "gcs", Bucket)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.chdir(tmp_path)
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    yield Bucket.store
    backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="run the slow end-to-end tests at full size (every section of `reproduce`, the "
                          "README's main command to its last step); without it, and in CI, they run reduced")


@pytest.fixture(scope="session")
def full(request) -> bool:
    """True under --full: a slow test runs its full-size form instead of the reduced one CI runs."""
    return request.config.getoption("--full")


def pytest_collection_modifyitems(config, items):
    """The slow tests first, so that under xdist the two workers finish together instead of one idling
    while the other runs a long end-to-end test that happened to come last."""
    del config
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order within


def pytest_report_header(config):
    del config
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform})"


def pytest_unconfigure(config):
    del config
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
