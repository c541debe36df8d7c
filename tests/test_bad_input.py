"""Bad configs and inputs get a clear error naming the problem, before any compile, losing nothing."""
import hashlib
import json
import os
import re
import shutil

import pytest

from openmoe2_jax import errors, validation
from openmoe2_jax.data import bpe, sources
from openmoe2_jax.runtime import checkpoint, restore
from openmoe2_jax.train import loop
from tests.conftest import small_config


def quiet(*args):
    del args


def snapshot(path):
    """{relative path: sha256} of every file under `path`."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


CONFIG_CASES = [
    # (override, expected message fragment)
    (lambda c: c.model.__setitem__("num_layer", 3), "config.model.num_layer is not a known field"),
    (lambda c: c.model.__setitem__("num_layers", -2), "config.model.num_layers = -2"),
    (lambda c: c.model.__setitem__("d_model", 33), "does not divide config.model.d_model = 33"),
    (lambda c: c.model.__setitem__("d_model", 30), "head_dim = 15 .* must be even"),
    (lambda c: c.model.update(num_heads=4, num_kv_heads=3, d_model=32), "num_kv_heads = 3 must divide"),
    (lambda c: c.model.__setitem__("dtype", "float16"), "config.model.dtype = 'float16'"),
    (lambda c: c.objective.__setitem__("kind", "mdlm"), "expected one of 'diffusion', 'ar'"),
    (lambda c: c.objective.__setitem__("t_eps", 1.5), "config.objective.t_eps = 1.5"),
    (lambda c: c.objective.__setitem__("random_length_buckets", (8, 64)), "shorter than config.data.seq_len"),
    (lambda c: c.data.__setitem__("validation_fraction", 1.0), "config.data.validation_fraction = 1.0"),
    (lambda c: c.data.__setitem__("source", "hf_hub"), "config.data.source = 'hf_hub'"),
    (lambda c: c.data.__setitem__("source", "jsonl"), "config.data.paths is empty"),
    (lambda c: c.train.__setitem__("warmup_steps", 100), "warmup_steps = 100 exceeds"),
    (lambda c: c.train.__setitem__("learning_rate", 0.0), "config.train.learning_rate = 0.0"),
    (lambda c: c.train.__setitem__("batch_size", 6), "not divisible by the 8 batch shards"),
    (lambda c: c.mesh.update(fsdp=3), "do not divide the 8 available devices"),
    (lambda c: c.mesh.update(data=2, expert=2), "multiply to 4 devices but 8 are available"),
    (lambda c: c.__setitem__("seed", -1), "config.seed = -1"),
    (lambda c: c.model.__setitem__("vocab_size", 1000), "config.model.vocab_size = 1000 is smaller"),
    (lambda c: c.moe.__setitem__("top_k", 9), "config.moe.top_k = 9 exceeds config.moe.num_experts = 4"),
    (lambda c: c.moe.update(routing="tc", gate="pre_softmax"), "'pre_softmax' is an expert-choice gate"),
    (lambda c: c.moe.update(routing="tc", top_k=1), "top_k = 1 with a post-softmax token-choice"),
    (lambda c: c.moe.update(num_experts=5, top_k=2), "num_experts = 5 is not divisible by the mesh's expert"),
    (lambda c: c.moe.update(group_tokens=96), "group_tokens = 96 does not split"),
    (lambda c: c.model.update(head_chunk=7), "config.model.head_chunk = 7 does not divide config.data.seq_len = 32"),
    (lambda c: c.objective.update(masked_head=1.5), "config.objective.masked_head"),
    (lambda c: c.model.update(attention_impl="flash"), "config.model.attention_impl"),
    (lambda c: (c.model.update(attention_impl="splash_interpret", num_heads=2, num_kv_heads=2),
                c.mesh.update(data=1, fsdp=1, expert=2, tensor=4)),
     r"num_heads = 2 is not divisible by the mesh's tensor axis \(4\)"),
    (lambda c: (c.train.__setitem__("batch_size", 24), c.moe.update(group_tokens=64)),
     "group_tokens = 64 neither divides nor is a multiple of the 96 tokens a batch shard holds"),
    (lambda c: c.moe.__setitem__("routing", "hash"), "config.moe.routing = 'hash'"),
    (lambda c: c.objective.__setitem__("kind", "ar"), "leaks the future into a causal model"),
    (lambda c: c.eval.__setitem__("compressors", ("gzip",)), "config.eval.compressors = .*'xz' and/or 'bz2'"),
    (lambda c: c.data.__setitem__("tokenizer", "bpe:256"),
     r"config.data.tokenizer = 'bpe:256' is not allowed: expected .* 'bpe:N' with N an integer, 256 < N"),
]


@pytest.mark.parametrize("override,message", CONFIG_CASES)
def test_bad_config_is_refused_before_anything_runs(config, tmp_path, override, message):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("keep me")
    before = snapshot(workdir)
    config.unlock()
    config.mesh.update(data=-1, expert=2)  # 4 x 2 on the 8 test devices
    override(config)
    with pytest.raises(validation.ConfigError, match=message):
        loop.train(config, str(workdir), log=quiet)
    assert snapshot(workdir) == before


def _corpus_case(tmp_path, name):
    """(source, paths, expected message) for a broken corpus file."""
    if name == "missing":
        return "jsonl", (str(tmp_path / "nope.jsonl"),), "does not exist"
    if name == "no_match":
        return "text", (str(tmp_path / "*.txt"),), "matches no file"
    if name == "empty":
        (tmp_path / "empty.jsonl").write_text("\n\n")
        return "jsonl", (str(tmp_path / "empty.jsonl"),), "the corpus is empty"
    if name == "bad_json":
        (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
        return "jsonl", (str(tmp_path / "bad.jsonl"),), r"bad.jsonl:2: not valid JSON"
    if name == "no_field":
        (tmp_path / "f.jsonl").write_text('{"body": "x"}\n')
        return "jsonl", (str(tmp_path / "f.jsonl"),), "no string field 'text'"
    if name == "corrupt_parquet":
        (tmp_path / "c.parquet").write_bytes(b"PAR1 this is not parquet")
        return "parquet", (str(tmp_path / "c.parquet"),), "not a readable Parquet file"
    if name == "one_doc":
        (tmp_path / "one.txt").write_text("just one document")
        return "text", (str(tmp_path / "one.txt"),), "needs at least 2"
    if name == "not_prepared":
        return "prepared", (str(tmp_path),), "is not a prepared corpus: missing"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["missing", "no_match", "empty", "bad_json", "no_field",
                                  "corrupt_parquet", "one_doc", "not_prepared"])
def test_bad_corpus_is_named(config, tmp_path, name):
    source, paths, message = _corpus_case(tmp_path, name)
    config.data.update(source=source, paths=paths)
    with pytest.raises(errors.USER_ERRORS, match=message):
        loop.train(config, str(tmp_path / "run"), log=quiet)


def test_checkpoint_from_another_model_is_refused_and_kept(config, tmp_path):
    workdir = str(tmp_path / "run")
    config.train.steps = 3
    loop.train(config, workdir, log=quiet)
    before = snapshot(workdir)
    other = config.copy_and_resolve_references()
    other.model.d_model = 64
    with pytest.raises(errors.CheckpointError, match=r"(?s)different model.*params/embedding: checkpoint has "
                                                     r"\(\(100352, 32\), 'float32'\)"):
        loop.train(other, workdir, log=quiet)
    assert snapshot(workdir) == before


def test_unusable_checkpoint_directory(config, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("a file where the checkpoint directory belongs")
    with pytest.raises(errors.CheckpointError, match="exists and is not a directory"):
        loop.train(config, str(workdir), log=quiet)
    assert (workdir / "checkpoints").read_text().startswith("a file")


def test_too_few_epochs_for_the_steps(config, tmp_path):
    config.data.num_epochs = 1
    config.train.steps = 100_000
    with pytest.raises(validation.ConfigError, match="raise config.data.num_epochs"):
        loop.train(config, str(tmp_path / "run"), log=quiet)


def test_cli_prints_the_error_without_a_traceback(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "openmoe2_jax.train", f"--workdir={tmp_path}",
                          "--config.model.num_layers=0"], capture_output=True, text=True,
                         env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    assert out.returncode != 0
    assert "error: config.model.num_layers = 0 is not allowed: expected a positive integer" in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.listdir(tmp_path)  # the CLI wrote nothing into the workdir


def _train_cli(*args, cwd=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "openmoe2_jax.train", *args], capture_output=True, text=True,
                          env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"), timeout=600)


@pytest.mark.parametrize("case", ["unknown_field", "misspelt_group", "renamed_field", "repeated_override",
                                  "not_utf8", "workdir_is_a_file"])
def test_cli_names_bad_overrides_and_inputs_without_a_traceback(tmp_path, case):
    workdir = tmp_path / "run"
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')   # latin-1, not UTF-8, on line 2
    args, message = {
        "unknown_field": (["--config.model.nonexistent=1"],
                          "--config.model.nonexistent: config.model has no field 'nonexistent'"),
        "misspelt_group": (["--config.modell.num_layers=1"],
                           "--config.modell.num_layers: config has no field 'modell'. Did you mean \"model\""),
        "renamed_field": (["--config.moe.router=sigmoid"],
                          "--config.moe.router: the field 'router' is now config.moe.gate; use --config.moe.gate=..."),
        "repeated_override": (["--config.data.paths=('a.jsonl',)", "--config.data.paths=('b.jsonl',)"],
                              "--config.data.paths is given 2 times; give each config override once"),
        "not_utf8": (["--config.data.source=jsonl", f"--config.data.paths=('{bad}',)"],
                     f"{bad}:2: not UTF-8 (byte 0xe9 at column 14)"),
        "workdir_is_a_file": ([], "is an existing file, not a directory"),
    }[case]
    if case == "workdir_is_a_file":
        workdir.write_text("notes I keep")
    out = _train_cli(f"--workdir={workdir}", *args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message in out.stderr, out.stderr[-2000:]
    if case == "workdir_is_a_file":
        assert workdir.read_text() == "notes I keep"
    else:
        assert not workdir.exists()


def test_a_diverged_loss_is_an_error_line_and_keeps_the_last_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    out = _train_cli(f"--workdir={workdir}", "--config.train.steps=6", "--config.train.warmup_steps=1",
                     "--config.checkpoint.every_steps=2", "--config.eval.every_steps=0",
                     "--config.eval.compressors=()", "--config.train.grad_clip=0.0",
                     "--config.train.learning_rate=1e12", "--config.log_every_steps=1")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss is") and "last checkpoint kept" in last, out.stderr[-2000:]
    # The error waited for the save in flight: the last checkpoint before the diverged step is whole.
    diverged = int(re.search(r"at step (\d+)", last).group(1))
    entries = os.listdir(workdir / "checkpoints")
    saved = sorted(int(d) for d in entries if d.isdigit())
    assert saved[-1] == (diverged - 1) // 2 * 2 and all(d.isdigit() for d in entries), entries
    assert restore.load(str(workdir)).step == saved[-1]


def test_an_error_in_the_loop_finishes_the_save_in_flight_first(config, tmp_path, monkeypatch):
    closed = []
    close = checkpoint.Checkpoints.close
    monkeypatch.setattr(checkpoint.Checkpoints, "close", lambda self: closed.append(True) or close(self))
    config.train.update(learning_rate=1e12, grad_clip=0.0)
    config.checkpoint.update(every_steps=1, async_save=True)  # a save is in flight at every step
    with pytest.raises(FloatingPointError, match="last checkpoint kept"):
        loop.train(config, str(tmp_path / "run"), log=quiet)
    assert closed == [True]
    assert restore.load(str(tmp_path / "run")).step >= 1


# ------------------------------------------------------------------ another vocabulary

@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """(config, workdir) of a 2-step run with config.data.tokenizer = 'bpe:512'."""
    config = small_config()
    config.data.tokenizer = "bpe:512"
    config.train.steps = 2
    workdir = str(tmp_path_factory.mktemp("bpe_run") / "run")
    loop.train(config, workdir, log=quiet)
    return config, workdir


def _other_vocabulary(workdir, change):
    """Changes the vocabulary a resume or eval of `workdir` would get; returns (tokenizer name, the
    vocabulary's description expected in the error)."""
    if change == "replaced_file":  # bpe_512.tiktoken + json of another bpe:512 (Genesis only: other ranks)
        other = bpe.tokenizer("bpe:512", bpe.train(list(sources.read_bible())[:50], 512))
        bpe.save(os.path.join(workdir, "tokenizer"), other)
        return "bpe:512", rf"'bpe:512' \(513 ids, sha256 {other.sha256[:12]}"
    num_ids = dict(bpe_1024=1025, cl100k_base=100277)[change.replace(":", "_")]
    return change, rf"'{change}' \({num_ids} ids"


@pytest.mark.parametrize("change", ["bpe:1024", "cl100k_base", "replaced_file"])
def test_resume_with_another_vocabulary_is_refused_naming_both(bpe_run, tmp_path, change):
    config, original = bpe_run
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    with open(os.path.join(workdir, "tokenizer", "bpe_512.json")) as f:
        trained = json.load(f)["sha256"]
    name, theirs = _other_vocabulary(workdir, change)
    before = snapshot(workdir)
    other = config.copy_and_resolve_references()
    other.data.tokenizer = name
    other.train.steps = 4
    both = (rf"\(step 2\) was trained with the vocabulary 'bpe:512' \(513 ids, sha256 {trained[:12]}.*"
            rf"config.data.tokenizer = {theirs}")
    with pytest.raises(errors.VocabularyError, match=both):
        loop.train(other, workdir, log=quiet)
    assert snapshot(workdir) == before


def test_a_changed_vocabulary_file_is_refused(bpe_run, tmp_path):
    config, original = bpe_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    path = workdir / "tokenizer" / "bpe_512.tiktoken"
    path.write_bytes(path.read_bytes().replace(b" 300\n", b" 999\n").replace(b" 301\n", b" 300\n")
                     .replace(b" 999\n", b" 301\n"))  # two ranks swapped
    before = snapshot(workdir)
    for attempt in (lambda: loop.train(config, str(workdir), log=quiet), lambda: restore.load(str(workdir))):
        with pytest.raises(errors.VocabularyError, match="bpe_512.tiktoken has sha256 .* but .*bpe_512.json "
                                                         "records .* was changed after it was trained"):
            attempt()
    assert snapshot(workdir) == before


@pytest.mark.parametrize("change", ["bpe:1024", "cl100k_base", "replaced_file"])
def test_eval_with_another_vocabulary_is_refused_naming_both(bpe_run, tmp_path, change):
    _, original = bpe_run
    workdir = str(tmp_path / "run")
    shutil.copytree(original, workdir)
    name, theirs = _other_vocabulary(workdir, change)
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    saved["data"]["tokenizer"] = name
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(saved, f)
    if change != "replaced_file":  # the name alone is refused, before any vocabulary is loaded
        theirs = rf"'{name}': its embedding rows"
    before = snapshot(workdir)
    both = r"\(step 2\) was trained with the vocabulary 'bpe:512' \(513 ids, .*config.data.tokenizer = "
    both += theirs
    with pytest.raises(errors.VocabularyError, match=both):
        restore.load(workdir)
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_train_takes_an_experiment_id_and_scale(tmp_path):
    workdir = tmp_path / "run"
    out = _train_cli(f"--workdir={workdir}", "--experiment=moetopk_100b_1e_8b1b7a_difflm", "--scale=smoke",
                     "--config.train.steps=1", "--config.eval.every_steps=1")
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((workdir / "config.json").read_text())  # the study's name for sec01/tc
    assert (saved["moe"]["routing"], saved["data"]["tokenizer"], saved["train"]["steps"]) == ("tc", "bpe:2048", 1)
    for args, message in (
            (["--experiment=sec03/nope"], "error: --experiment 'sec03/nope': section 3 has ['ec', 'tc']"),
            (["--experiment=sec03/tc", "--scale=huge"], "error: --scale='huge': expected one of paper, small, cpu"),
            (["--experiment=sec03/tc", "--config=openmoe2_jax/configs/base.py"],
             "error: give --experiment or --config, not both")):
        out = _train_cli(f"--workdir={tmp_path / 'bad'}", *args)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
