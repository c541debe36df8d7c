"""Evaluation: likelihood estimators against exact expectations, benchmark scoring, sampling."""
import itertools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from openmoe2_jax import objectives
from openmoe2_jax.data import benchmarks
from openmoe2_jax.data.tokenizer import get_tokenizer
from openmoe2_jax.eval import generate
from openmoe2_jax.models.transformer import ModelConfig, Transformer
from openmoe2_jax.objectives import likelihood
from openmoe2_jax.train import step as step_lib

NUM_IDS = 63  # a small vocabulary (mask id 63, 128 rows) so the estimators can be enumerated


def _dense_model(config, causal=False, num_ids=NUM_IDS):
    config.model.ffn = "dense"
    config.objective.kind = "ar" if causal else "diffusion"
    model = Transformer(ModelConfig.from_config(config, num_ids))
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    # Larger weights so the model's predictions depend strongly on the masks.
    params = jax.tree.map(lambda p: p * 20 if p.ndim == 2 else p, params)
    return model, params


def _objective(**kw):
    d = dict(kind="diffusion", weight="t", t_eps=1e-3, low_discrepancy=False, random_length_prob=0.0,
             random_length_buckets=(2,))
    d.update(kw)
    return ml_collections.FrozenConfigDict(d)


def _masked_ce_sums(model, params, x, positions):
    """S(m) = sum over i in m of CE at i with the tokens of m masked, for every subset m of positions."""
    out = {}
    for r in range(1, len(positions) + 1):
        for m in itertools.combinations(positions, r):
            noisy = np.array(x)
            noisy[list(m)] = NUM_IDS
            logits = np.asarray(model.apply({"params": params}, jnp.asarray(noisy)[None]))[0]
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
            out[m] = -sum(logp[i, x[i]] for i in m)
    return out


def test_validation_elbo_is_unbiased_for_the_exact_elbo_without_the_forced_mask(config):
    model, params = _dense_model(config)
    x = [5, 17, 42, 8]
    L = len(x)
    S = _masked_ce_sums(model, params, x, list(range(L)))
    # Exact ELBO by enumeration: int_0^1 (1/t) sum_{m != {}} t^|m| (1-t)^(L-|m|) S(m) dt, with no t floor
    # and no forced mask (the empty mask contributes nothing) ...
    t = np.linspace(0, 1, 400_001)
    exact = np.trapezoid(sum(t ** (len(m) - 1) * (1 - t) ** (L - len(m)) * s for m, s in S.items()), t)
    # ... which integrates to sum_l (1/l) mean_{|m| = l} S(m).
    by_size = sum(np.mean([s for m, s in S.items() if len(m) == l]) / l for l in range(1, L + 1))
    assert abs(exact - by_size) < 1e-6 * by_size
    # The training loss's expectation (t floored at eps, one forced mask when none drew) is larger.
    eps = 1e-3
    tt = (1 - eps) * t + eps
    training = np.trapezoid(sum(tt ** len(m) * (1 - tt) ** (L - len(m)) * s for m, s in S.items()) / tt
                            + (1 - tt) ** L * np.mean([S[(i,)] for i in range(L)]) / tt, t)
    assert training > exact * 1.05

    for mc_samples in (1, 3, 16):  # unbiased whatever the number of strata
        fn = jax.jit(likelihood.make_validation_fn(model, _objective(), NUM_IDS, seed=0, mc_samples=mc_samples))
        batch = jnp.asarray([x] * 2048)
        per_row = np.concatenate([np.asarray(fn(params, batch, i)["nats"]) for i in range(2)])
        mean, se = per_row.mean(), per_row.std() / math.sqrt(len(per_row))
        assert abs(mean - exact) < 4 * se, (mc_samples, mean, exact, se)
        assert se < 0.05 * exact  # the check has power
        assert abs(mean - training) > 4 * se  # and it tells the two apart


def test_conditional_estimator_converges_to_the_exact_expectation(config):
    model, params = _dense_model(config)
    x = [5, 17, 42, 8, 30]
    cont_pos = [2, 3, 4]
    T = len(cont_pos)
    S = _masked_ce_sums(model, params, x, cont_pos)
    exact = -np.mean([np.mean([s * T / l for m, s in S.items() if len(m) == l]) for l in range(1, T + 1)])

    M = 30  # l stratified: exactly 10 samples of each l in 1..3
    assert list(np.bincount(likelihood.stratified_counts(T, M))[1:]) == [10, 10, 10]
    fn = jax.jit(likelihood.make_conditional_fn(model, False, NUM_IDS, mc_samples=M))
    R = 256
    tokens = jnp.asarray([x] * R)
    cont = jnp.asarray([[i in cont_pos for i in range(5)]] * R)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(1), i))(jnp.arange(R))
    est = np.asarray(fn(params, tokens, cont, jnp.ones_like(cont), keys))
    mean, se = est.mean(), est.std() / math.sqrt(R)
    assert abs(mean - exact) < 4 * se + 1e-6, (mean, exact, se)

    # The context is never masked and exactly l of T continuation tokens are.
    masked = np.asarray(likelihood.mask_exactly(jax.random.key(0), cont[:4], jnp.asarray([1, 2, 3, 3])))
    assert masked.sum(1).tolist() == [1, 2, 3, 3] and not masked[:, :2].any()
    # Proxy: one pass with the whole continuation masked.
    proxy = jax.jit(likelihood.make_conditional_fn(model, False, NUM_IDS, 1, proxy=True))
    np.testing.assert_allclose(float(proxy(params, tokens[:1], cont[:1], jnp.ones_like(cont[:1]), keys[:1])[0]),
                               -S[tuple(cont_pos)], rtol=1e-4)


def test_ar_conditional_likelihood_is_the_sum_of_log_softmax_picks(config):
    model, params = _dense_model(config, causal=True)
    x = np.asarray([[5, 17, 42, 8, 30, 2]])
    cont = np.asarray([[False, False, False, True, True, True]])
    fn = likelihood.make_conditional_fn(model, True, NUM_IDS, 1)
    got = float(fn(params, jnp.asarray(x), jnp.asarray(cont), jnp.ones_like(cont), None)[0])
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(x)), np.float64)[0]
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = sum(logp[i - 1, x[0, i]] for i in (3, 4, 5))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    # And the validation NLL is the mean next-token CE over the same tokens.
    val = likelihood.make_validation_fn(model, _objective(kind="ar"), NUM_IDS, 0, 1)(params, jnp.asarray(x), 0)
    np.testing.assert_allclose(float(val["nats"][0]), -sum(logp[i - 1, x[0, i]] for i in range(1, 6)), rtol=1e-4)


def test_validation_is_deterministic_and_byte_accounting_is_exact(config):
    model, params = _dense_model(config)
    fn = jax.jit(likelihood.make_validation_fn(model, _objective(), NUM_IDS, seed=3, mc_samples=2))
    batch = jax.random.randint(jax.random.key(0), (4, 8), 0, NUM_IDS)
    a, b = fn(params, batch, 0), fn(params, batch, 0)
    np.testing.assert_array_equal(np.asarray(a["nats"]), np.asarray(b["nats"]))
    assert not np.array_equal(np.asarray(a["nats"]), np.asarray(fn(params, batch, 1)["nats"]))
    tok = get_tokenizer()
    rows = np.asarray([tok.encode("In the beginning God created")[:5]])
    assert likelihood.row_bytes(tok, rows, skip_first=False) == len("In the beginning God created".encode())
    assert likelihood.bits_per_byte(math.log(2) * 10, 5) == pytest.approx(2.0)


# ------------------------------------------------------------------ benchmark scoring plumbing

def _write_fixtures(tmp_path):
    official = [
        dict(ctx_a="A man sits", ctx_b="he", activity_label="Sitting", label=1,
             endings=["stands up slowly and walks away", "sits", "x", "jumps over the [title] fence"]),
        dict(ctx_a="The cat", ctx_b="it", activity_label="Pets", label=0,
             endings=["purrs loudly for a long while", "meows", "runs", "hisses at the big dog"]),
    ]
    (tmp_path / "hellaswag_val.jsonl").write_text("\n".join(json.dumps(r) for r in official))
    pre = [dict(query="Q: 1+1", choices=[" two", " three point five", " 2"], gold=2)]
    (tmp_path / "hellaswag_pre.jsonl").write_text("\n".join(json.dumps(r) for r in pre))
    for split in ("dev", "val"):
        (tmp_path / "mmlu" / split).mkdir(parents=True, exist_ok=True)
    (tmp_path / "mmlu" / "dev" / "astronomy_dev.csv").write_text('"What is the Sun?",A star,A planet,A moon,A comet,A\n')
    (tmp_path / "mmlu" / "val" / "astronomy_val.csv").write_text(
        "Closest planet to the Sun?,Venus,Mercury,Earth,Mars,B\nLargest planet?,Jupiter,Saturn,Mars,Venus,A\n")


def test_benchmark_readers_parse_both_formats(tmp_path):
    _write_fixtures(tmp_path)
    hs = benchmarks.read_hellaswag(str(tmp_path / "hellaswag_val.jsonl"))
    assert hs[0].context == "Sitting: A man sits He" and hs[0].label == 1
    assert hs[0].choices[3] == " jumps over the. fence"
    pre = benchmarks.read_hellaswag(str(tmp_path / "hellaswag_pre.jsonl"))
    assert pre[0].choices == (" two", " three point five", " 2") and pre[0].label == 2
    zero = benchmarks.read_mmlu(str(tmp_path / "mmlu"), "val", shots=0)
    five = benchmarks.read_mmlu(str(tmp_path / "mmlu"), "val", shots=5)
    assert [q.label for q in zero] == [1, 0] and zero[0].choices == (" A", " B", " C", " D")
    assert zero[0].context.endswith("Closest planet to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer:")
    assert "What is the Sun?\nA. A star" in five[0].context and "Answer: A\n\n" in five[0].context
    with pytest.raises(benchmarks.CorpusError, match="github.com/rowanz/hellaswag"):
        benchmarks.read_hellaswag(str(tmp_path / "missing.jsonl"))
    with pytest.raises(benchmarks.CorpusError, match="dev/<subject>_dev.csv"):
        benchmarks.read_mmlu(str(tmp_path / "nothing"))


def test_scoring_with_a_model_of_known_preferences(tmp_path):
    """A stand-in model whose log-likelihood is minus the continuation's token count: acc picks the
    choice with fewest tokens, acc_norm the largest -tokens/chars. Expected values computed here."""
    _write_fixtures(tmp_path)
    tok = get_tokenizer()
    questions = benchmarks.read_hellaswag(str(tmp_path / "hellaswag_val.jsonl")) + \
        benchmarks.read_hellaswag(str(tmp_path / "hellaswag_pre.jsonl"))
    fake = lambda tokens, cont, valid, keys: -np.asarray(cont).sum(1).astype(np.float32)
    result = benchmarks.score(questions, fake, tok, seq_len=32, batch_rows=4)
    acc = acc_norm = 0
    for q in questions:
        ll = [-len(tok.encode(c)) for c in q.choices]
        acc += int(np.argmax(ll) == q.label)
        acc_norm += int(np.argmax([l / len(c) for l, c in zip(ll, q.choices)]) == q.label)
    assert result["acc"] == acc / 3 and result["acc_norm"] == acc_norm / 3
    assert result["num_questions"] == 3
    assert 0 < result["acc"] < 1 or 0 < result["acc_norm"] < 1  # the fixture discriminates


# ------------------------------------------------------------------ generation

def test_sampler_schedule_and_validity():
    assert generate._num_transfer(10, 4) == [3, 3, 2, 2]
    V, mask_id = 16, 10
    # A model that always prefers token (position % 5): greedy diffusion must write exactly that.
    def forward(tokens):
        L = tokens.shape[1]
        return jax.nn.one_hot(jnp.arange(L) % 5, V)[None] * 5.0
    s = generate.diffusion_generate(forward, [1, 2], length=8, steps=8, block_length=4, mask_id=mask_id,
                                    num_ids=mask_id, eot_id=9)
    assert s.tokens == [(i + 2) % 5 for i in range(8)] and s.forward_passes == 8
    s = generate.diffusion_generate(forward, [], length=8, steps=2, block_length=8, mask_id=mask_id,
                                    num_ids=mask_id, eot_id=9, temperature=1.0, remasking="random")
    assert len(s.tokens) == 8 and all(0 <= t < mask_id for t in s.tokens) and s.forward_passes == 2


@pytest.mark.slow
def test_memorised_text_is_regenerated_by_the_diffusion_sampler(config):
    from openmoe2_jax.runtime import optimizer, state as state_lib
    tok = get_tokenizer()
    text = "In the beginning God created the heaven and the earth."
    cl100k = tok.encode(text) + [tok.eot_id]
    # The verse's own ids, renumbered 0..n-1 (mask id n): the model learns the same sequence without
    # a 100k-row output head, which would make each of the 500 steps ~50x more expensive.
    vocab = sorted(set(cl100k))
    ids = [vocab.index(i) for i in cl100k]
    num_ids, eot_id = len(vocab), vocab.index(tok.eot_id)
    decode = lambda compact: tok.decode([vocab[i] for i in compact])
    seq = len(ids)
    config.model.update(ffn="dense", d_model=64, num_heads=2, num_kv_heads=2, mlp_dim=128)
    config.objective.random_length_prob = 0.0
    config.data.seq_len = seq
    config.train.update(steps=500, learning_rate=3e-3, warmup_steps=10, batch_size=8)
    model = Transformer(ModelConfig.from_config(config, num_ids))
    tx = optimizer.make(config.train)
    state = jax.jit(lambda: nn.meta.unbox(state_lib.init_fn(model, tx, 0, 8, seq)()))()
    step = jax.jit(lambda s, b: step_lib.train_step(
        s, b, model=model, tx=tx, schedule=optimizer.schedule(config.train),
        objective_cfg=objectives.frozen_objective(config.objective), mask_id=num_ids))
    batch = jnp.asarray([ids] * 8)
    for _ in range(config.train.steps):
        state, metrics = step(state, batch)
    forward = generate.make_forward(model, state.params)
    prompt = ids[:3]
    full = generate.diffusion_generate(forward, prompt, seq - 3, seq - 3, seq - 3, num_ids, num_ids, eot_id,
                                       decode=decode)
    assert decode(prompt) + full.text == text, full.text
    fast = generate.diffusion_generate(forward, prompt, seq - 3, 2, seq - 3, num_ids, num_ids, eot_id,
                                       decode=decode)
    assert fast.forward_passes == 2 and all(0 <= t < num_ids for t in fast.tokens)


@pytest.mark.slow
def test_eval_and_sample_clis_on_a_trained_workdir(config, tmp_path):
    from openmoe2_jax.train import loop
    _write_fixtures(tmp_path)
    workdir = str(tmp_path / "run")
    config.train.steps = 2
    loop.train(config, workdir, log=lambda *a: None)
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")

    progress = []

    def run(module, *flags):
        out = subprocess.run([sys.executable, "-m", module, f"--workdir={workdir}", *flags],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "read only" not in out.stderr and "read_only" not in out.stderr  # orbax's, silenced
        progress.append(out.stderr)
        return out.stdout

    text = [json.loads(run("openmoe2_jax.eval", "--task=text", "--batch_rows=2", "--limit=2",
                           "--mc_samples=2")) for _ in range(2)]
    assert text[0]["nats_per_token"] == text[1]["nats_per_token"] > 0  # same checkpoint + seed
    assert text[0]["estimator"] == "elbo_2_samples" and text[0]["bits_per_byte"] > 0
    hs = json.loads(run("openmoe2_jax.eval", "--task=hellaswag",
                        f"--data={tmp_path / 'hellaswag_val.jsonl'}", "--mc_samples=3"))
    assert hs["num_questions"] == 2 and 0 <= hs["acc"] <= 1 and hs["estimator"] == "monte_carlo_3_samples"
    proxy = json.loads(run("openmoe2_jax.eval", "--task=mmlu", f"--data={tmp_path / 'mmlu'}",
                           "--shots=5", "--proxy"))
    assert proxy["estimator"].startswith("proxy") and proxy["num_questions"] == 2
    assert os.path.exists(os.path.join(workdir, "eval", "mmlu_5shot.json"))
    out = run("openmoe2_jax.sample", "--prompt=In the beginning", "--length=8", "--steps=4")
    assert out.startswith("In the beginning") and "4 forward passes" in out
    # Each command's last progress line (stderr; stdout stays JSON): text, text, hellaswag, mmlu, sample.
    assert "eval text (validation, 2 rows a batch): 2/2 batches" in progress[0]
    assert "eval hellaswag (2 questions): 8/8 rows" in progress[2]   # 2 questions x 4 choices
    assert "sample: 4/4 forward passes" in progress[4] and "done in" in progress[4]
    bad = subprocess.run([sys.executable, "-m", "openmoe2_jax.eval", f"--workdir={workdir}",
                          "--task=hellaswag"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "github.com/rowanz/hellaswag" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_a_checkpoint_scores_the_same_in_the_trainer_and_in_eval_on_one_device_and_on_a_mesh(config, tmp_path):
    """Batch-level EC trained on 8 devices routes 8 groups of one row per step; eval restores only the
    parameters and routes the same groups, on one device and sharded over (data 2, fsdp 2, expert 2)."""
    from openmoe2_jax.eval import evaluate  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.runtime import restore  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.train import loop  # pylint: disable=import-outside-toplevel
    config.data.tokenizer = "bpe:512"
    config.train.steps = 2
    config.eval.update(num_batches=2, mc_samples=2, seed=3)
    workdir = str(tmp_path / "run")
    summary = loop.train(config, workdir, log=lambda *a: None)
    scores = {}
    for name, mesh, devices in (("one device", None, None),
                                ("2x2x2", dict(data=2, fsdp=2, expert=2, tensor=1), jax.devices())):
        trained = restore.load(workdir, mesh_config=mesh, devices=devices)
        assert trained.routing == dict(groups=8, tokens_per_group=32) and evaluate.default_rows(trained, 32) == 1
        up = trained.params["layer_0"]["moe"]["w_up"]
        assert len(up.sharding.device_set) == (1 if mesh is None else 8)
        if mesh:  # a chip holds a quarter of the experts' weights (fsdp x expert), not all of them
            assert up.addressable_shards[0].data.size * 4 == up.size
        scores[name] = evaluate.evaluate_text(trained, "validation", 32, config.train.batch_size,
                                              config.eval.mc_samples, config.eval.seed, config.eval.num_batches)
    np.testing.assert_allclose(scores["one device"]["nats_per_token"], summary.final_validation_loss, rtol=2e-6)
    np.testing.assert_allclose(scores["2x2x2"]["nats_per_token"], summary.final_validation_loss, rtol=2e-6)
    with pytest.raises(restore.ConfigError, match="does not split into this run's routing groups of 32"):
        trained.model(rows=1, seq_len=16)
