"""The lm-evaluation-harness model: a local multiple-choice task through lm_eval's own evaluator scores
exactly as the project's scorer, rolling log-likelihoods of an AR model are the exact sums, generation
stops at stop sequences, bad model arguments are named."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")  # the `lm_eval` extra (in `test`)

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from openmoe2_jax.data import benchmarks, bpe  # noqa: E402
from openmoe2_jax.eval import harness  # noqa: E402
from openmoe2_jax.export import ExportError, export_workdir, write_export, writer  # noqa: E402
from openmoe2_jax.models.transformer import ModelConfig, Transformer, with_groups  # noqa: E402
from openmoe2_jax.objectives import likelihood  # noqa: E402
from openmoe2_jax.runtime import restore  # noqa: E402
from openmoe2_jax.runtime.checkpoint import CheckpointError  # noqa: E402
from openmoe2_jax.train import loop  # noqa: E402
from tests.conftest import small_config, tiny_bpe_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "and the king went forth unto the city of the land with his sons and priests".split()
MC, ROWS = 4, 4           # Monte Carlo samples; rows per forward pass (2 routing groups of 2 rows)
AR_LEN = 16               # the AR export's rows (max_length)
_rng = np.random.default_rng(2)
# The local multiple-choice task: contexts long enough that rows are mostly real tokens, so that EC's
# capacity binds and the routing groups matter.
QUESTIONS = [(" ".join(_rng.choice(WORDS, 26)), [" ".join(_rng.choice(WORDS, k)) for k in (1, 2, 3)], i % 3)
             for i in range(6)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step run of a 1-layer batch-level EC diffusion MoE (bpe:300): 8 fake devices route 8 groups of
    16 x 32 / 8 = 64 tokens, two rows each; and its export."""
    tmp = tmp_path_factory.mktemp("harness")
    c = tiny_bpe_config(tmp, WORDS, rows=400)
    c.train.batch_size = 16
    workdir = tmp / "run"
    loop.train(c, str(workdir), log=lambda *a: None)
    export_workdir(str(workdir), str(tmp / "export"))
    return workdir, tmp / "export"


@pytest.fixture(scope="module")
def ar_export(run, tmp_path_factory):
    """An export of a dense AR model with random weights (N(0, 0.3^2): sharp, input-dependent predictions;
    the head's columns of the 256 byte tokens and EOT zero, so that greedy picks the BPE's merged tokens,
    whole words whose text round-trips) and the run's bpe:300 vocabulary. Its config.json records no
    row length (max_length= needed)."""
    workdir, _ = run
    tok = bpe.load(workdir / "tokenizer", "bpe:300")
    c = small_config()
    c.model.update(ffn="dense", dtype="float32")
    c.objective.kind = "ar"
    cfg = ModelConfig.from_config(c, tok.num_ids)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: (np.ones(a.shape) if path[-1].key == "scale" else rng.normal(0, 0.3, a.shape)
                         ).astype(np.float32), restore.abstract_params(cfg))
    params["head"][:, :256] = params["head"][:, tok.eot_id] = 0.0
    out = tmp_path_factory.mktemp("ar") / "export"
    write_export(str(out), cfg, "ar", params, writer.tokenizer_description(tok),
                 tokenizer_files=bpe.files(workdir / "tokenizer", "bpe:300"))
    lm = get_model("openmoe2_jax").create_from_arg_string(f"export={out},max_length={AR_LEN},batch_size=3")
    return lm, Transformer(cfg), params, tok, out


def _task_dir(tmp_path):
    """A local multiple-choice task `toy_choice` (JSONL + YAML) for TaskManager(include_path=...)."""
    data = tmp_path / "toy.jsonl"
    data.write_text("\n".join(json.dumps(dict(query=q, choices=c, label=a)) for q, c, a in QUESTIONS))
    (tmp_path / "toy_choice.yaml").write_text(f"""
task: toy_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {tmp_path / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
""")
    return tmp_path


def _requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.slow
def test_multiple_choice_task_through_lm_eval_equals_the_projects_scorer(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    workdir, export_dir = run
    results = lm_eval.simple_evaluate(
        model="openmoe2_jax", model_args=f"workdir={workdir},mc_samples={MC},seed=3", batch_size=ROWS,
        tasks=["toy_choice"], task_manager=TaskManager(include_path=str(_task_dir(tmp_path)),
                                                       include_defaults=False),
        bootstrap_iters=0, log_samples=True)
    acc = results["results"]["toy_choice"]["acc,none"]
    samples = sorted(results["samples"]["toy_choice"], key=lambda s: s["doc_id"])
    harness_ll = np.asarray([[r[0] for r in s["filtered_resps"]] for s in samples], np.float64)
    assert all(not greedy for s in samples for _, greedy in s["filtered_resps"])    # diffusion: False

    # The project's scorer on the same questions (lm_eval puts a space between question and choice),
    # with the routing groups the run trained with: 4 rows of 32 tokens = 2 groups of 64.
    trained = restore.load_params(str(workdir))
    assert trained.routing == dict(groups=8, tokens_per_group=64)
    questions = [benchmarks.Question(q, tuple(" " + x for x in c), a) for q, c, a in QUESTIONS]

    def own_scorer(groups):
        model = Transformer(with_groups(trained.model_cfg, groups))
        fn = likelihood.make_conditional_fn(model, False, trained.tokenizer.mask_id, MC)
        return benchmarks.score(questions, jax.jit(lambda *a: fn(trained.params, *a)), trained.tokenizer,
                                32, ROWS, seed=3)

    own = own_scorer(groups=2)
    own_ll = np.asarray([q["loglik"] for q in own["questions"]])
    print(f"toy_choice ({len(QUESTIONS)} questions, {MC} MC samples): lm_eval acc {acc:.4f}, project "
          f"scorer acc {own['acc']:.4f}, max |loglik difference| {np.abs(harness_ll - own_ll).max():.2e}")
    assert acc == own["acc"]
    np.testing.assert_allclose(harness_ll, own_ll, rtol=1e-6, atol=1e-6)
    # Routing the 4-row pass as one group of 128 tokens (not as trained) gives other scores.
    one_group = np.asarray([q["loglik"] for q in own_scorer(groups=1)["questions"]])
    assert np.abs(one_group - own_ll).max() > 1e-4

    # The export of the same run scores the same requests identically.
    pairs = [(q, " " + x) for q, c, _ in QUESTIONS for x in c]
    lm = harness.OpenMoE2LM(export=str(export_dir), mc_samples=MC, batch_size=ROWS, seed=3)
    from_export = np.asarray([ll for ll, _ in lm.loglikelihood(_requests("loglikelihood", pairs))])
    np.testing.assert_allclose(from_export.reshape(own_ll.shape), own_ll, rtol=1e-6, atol=1e-6)


def test_ar_rolling_loglikelihood_is_the_exact_sum_of_token_logprobs(ar_export):
    lm, model, params, tok, _ = ar_export
    rng = np.random.default_rng(1)
    long_text = " ".join(rng.choice(WORDS, 20))
    ids = tok.encode(long_text)
    n = len(ids)
    assert AR_LEN < n < 2 * (AR_LEN - 1)       # two windows: 15 tokens after EOT, then the rest
    short_text = "the king went forth"
    texts = [(long_text,), (short_text,), ("",)]
    rolling = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", texts))

    # Each row's log-softmax from one forward pass of the model on rows padded at the end (causal: the
    # padding changes no earlier position).
    apply = jax.jit(lambda rows: model.apply({"params": params}, rows))

    def token_logprobs(*rows):
        padded = np.asarray([r + [tok.eot_id] * (AR_LEN - len(r)) for r in rows])
        return _log_softmax(np.asarray(apply(padded), np.float64))

    # Window 1: tokens 0..14 after EOT; window 2: tokens 15..n-1, each given the AR_LEN-1 tokens before.
    start, short, context = n - AR_LEN, tok.encode(short_text), tok.encode("the city of")
    first, second, short_lp, lp = token_logprobs([tok.eot_id] + ids[:AR_LEN - 1], ids[start:],
                                                 [tok.eot_id] + short, context)
    exact = sum(first[i, ids[i]] for i in range(AR_LEN - 1))
    exact += sum(second[i - start - 1, ids[i]] for i in range(AR_LEN - 1, n))
    short_exact = sum(short_lp[i, short[i]] for i in range(len(short)))
    np.testing.assert_allclose(rolling, [exact, short_exact, 0.0], rtol=1e-5)

    # loglikelihood: exact, and is_greedy iff every continuation token is the argmax over the real ids.
    lp = lp[:len(context)]
    greedy_id = int(np.argmax(lp[-1, :tok.num_ids]))
    other_id = int(np.argsort(lp[-1, :tok.num_ids])[-2])
    pairs = [(tok.decode(context), tok.decode([greedy_id])), (tok.decode(context), tok.decode([other_id]))]
    assert [tok.encode(c) for _, c in pairs] == [[greedy_id], [other_id]]     # round trips
    scored = lm.loglikelihood(_requests("loglikelihood", pairs))
    np.testing.assert_allclose([s[0] for s in scored], [lp[-1, greedy_id], lp[-1, other_id]], rtol=1e-5)
    assert [s[1] for s in scored] == [True, False]


def test_generate_until_stops_at_a_stop_sequence(ar_export, run):
    lm, *_ = ar_export
    context = "the king went"
    full = lm.generate_until(_requests("generate_until", [(context, dict(until=[], max_gen_toks=10))]))[0]
    assert len(full) > 6
    stop = full[4:6]
    expected = full[:full.index(stop)]
    cut = lm.generate_until(_requests("generate_until", [
        (context, dict(until=[stop, "never appears"], max_gen_toks=10)),
        (context, dict(until=stop, max_gen_toks=10))]))
    assert cut == [expected, expected] and stop not in expected
    print(f"AR greedy: {full!r}, until {stop!r}: {expected!r}")

    # Diffusion: the canvas is filled, then cut at the first stop sequence.
    diffusion = harness.OpenMoE2LM(workdir=str(run[0]), batch_size=1, gen_steps=4)
    full = diffusion.generate_until(_requests("generate_until", [(context, dict(max_gen_toks=8))]))[0]
    assert len(full) >= 2
    stop = full[1:2]
    cut = diffusion.generate_until(_requests("generate_until", [(context, dict(until=[stop],
                                                                                max_gen_toks=8))]))
    assert cut == [full[:full.index(stop)]]
    print(f"diffusion: {full!r}, until {stop!r}: {cut[0]!r}")


def test_bad_model_args_are_named(run, ar_export, tmp_path):
    workdir, export_dir = run
    make = get_model("openmoe2_jax").create_from_arg_string
    with pytest.raises(harness.HarnessError, match="exactly one of workdir=DIR .* or export=DIR.*neither"):
        make("")
    with pytest.raises(harness.HarnessError, match="got both"):
        make(f"workdir={workdir},export={export_dir}")
    with pytest.raises(harness.HarnessError, match="unknown model argument.*pretrained.*expected some of "
                                                   "workdir, export"):
        make(f"pretrained={workdir}")
    with pytest.raises(harness.HarnessError, match="step=2: only with workdir"):
        make(f"export={export_dir},step=2")
    with pytest.raises(harness.HarnessError, match="tokens_per_group=64: only with workdir"):
        make(f"export={export_dir},tokens_per_group=64")
    with pytest.raises(harness.HarnessError, match="mc_samples=0: expected a positive integer"):
        make(f"workdir={workdir},mc_samples=0")
    with pytest.raises(harness.HarnessError, match="remasking='best': expected low_confidence or random"):
        make(f"export={export_dir},remasking=best")
    with pytest.raises(CheckpointError, match="has no config.json: not a training workdir"):
        make(f"workdir={tmp_path}")
    with pytest.raises(ExportError, match="has no config.json: not an export directory"):
        make(f"export={tmp_path}")
    lm = ar_export[0]
    with pytest.raises(harness.HarnessError, match="request 1: the continuation is 16 tokens; this model "
                                                   "scores at most max_length - 1 = 15"):
        lm.loglikelihood(_requests("loglikelihood", [("a", " the"), ("a", " the king" * 8)]))
    with pytest.raises(harness.HarnessError, match="generation argument max_gen_toks=0"):
        lm.generate_until(_requests("generate_until", [("a", dict(max_gen_toks=0))]))


@pytest.mark.slow
def test_command_line_registers_the_model(ar_export, tmp_path):
    """`python -m openmoe2_jax.eval.harness` is lm_eval's command line with the model registered."""
    export_dir, out = ar_export[-1], tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "openmoe2_jax.eval.harness", "--model", "openmoe2_jax", "--model_args",
         f"export={export_dir},max_length={AR_LEN}", "--tasks", "toy_choice", "--include_path",
         str(_task_dir(tmp_path)), "--batch_size", "4", "--output_path", str(out), "--limit", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "toy_choice" in run.stdout and "acc" in run.stdout
