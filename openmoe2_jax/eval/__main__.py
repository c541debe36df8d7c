"""python -m openmoe2_jax.eval --workdir=DIR --task=text|hellaswag|mmlu [...]

text       validation nats/token and bits/byte on the held-out split of the run's corpus
           (--data=validation, the default) or on any file (.jsonl with a `text` field, or plain text).
hellaswag  0-shot acc / acc_norm (--data or config.eval.hellaswag_file).
mmlu       --shots=0|5 acc / acc_norm on the val split (--data or config.eval.mmlu_dir).

Diffusion models use --mc_samples Monte Carlo samples (128 for final numbers); --proxy scores
multiple choice with one fully-masked pass instead (labelled "proxy" in every output). Results go to
DIR/eval/<task>.json and DIR/tensorboard (eval/<task>/...).
"""
import json
import time

import jax
from absl import app, flags
from etils import epath
from tensorboardX import SummaryWriter

from openmoe2_jax import cli
from openmoe2_jax.data import benchmarks
from openmoe2_jax.errors import ConfigError
from openmoe2_jax.eval.evaluate import default_rows, evaluate_choice, evaluate_text
from openmoe2_jax.runtime import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to evaluate.", required=True)
_TASK = flags.DEFINE_enum("task", "text", ["text", "hellaswag", "mmlu"], "What to evaluate.")
_DATA = flags.DEFINE_string("data", "", "text: 'validation' or a file; hellaswag: JSONL; mmlu: data dir.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate at most this many questions / batches (0 = all).")
_MC = flags.DEFINE_integer("mc_samples", 0, "Diffusion Monte Carlo samples (0 = config.eval.mc_samples).")
_PROXY = flags.DEFINE_bool("proxy", False, "Diffusion multiple choice: one fully-masked pass (a proxy).")
_SHOTS = flags.DEFINE_integer("shots", 0, "MMLU few-shot examples from the dev split.")
_SEQ = flags.DEFINE_integer("seq_len", 0, "Row length (0 = config.data.seq_len).")
_ROWS = flags.DEFINE_integer("batch_rows", 0, "Rows per forward pass (0 = one routing group of the run's "
                             "training step for batch-level EC / capacity TC, else 8).")
_MESH = flags.DEFINE_string("mesh", "", "data,fsdp,expert,tensor sizes of the mesh the parameters are "
                            "sharded over (-1 fills; e.g. 2,2,2,1); default: one device.")
_SEED = flags.DEFINE_integer("seed", 0, "Fixes every mask of the evaluation.")


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors():
        mesh = None
        if _MESH.value:
            sizes = [int(x) for x in _MESH.value.split(",")]
            if len(sizes) != 4:
                raise ConfigError(f"--mesh={_MESH.value!r}: expected 4 sizes data,fsdp,expert,tensor")
            mesh = dict(zip(("data", "fsdp", "expert", "tensor"), sizes))
        trained = restore.load(_WORKDIR.value, _STEP.value, mesh, jax.devices() if mesh else None)
        config = trained.config
        seq_len = _SEQ.value or config.data.seq_len
        rows = _ROWS.value or default_rows(trained, seq_len)
        mc = _MC.value or config.eval.mc_samples
        t0 = time.time()
        if _TASK.value == "text":
            result = evaluate_text(trained, _DATA.value, seq_len, rows, mc, _SEED.value, _LIMIT.value)
        else:
            if _TASK.value == "hellaswag":
                questions = benchmarks.read_hellaswag(_DATA.value or config.eval.hellaswag_file)
            else:
                questions = benchmarks.read_mmlu(_DATA.value or config.eval.mmlu_dir, "val", _SHOTS.value)
            if _LIMIT.value:
                questions = questions[:_LIMIT.value]
            result = evaluate_choice(trained, questions, seq_len, rows, mc, _PROXY.value, _SEED.value,
                                     _TASK.value)
    result.update(task=_TASK.value, step=trained.step, seconds=time.time() - t0,
                  objective=config.objective.kind)
    name = _TASK.value + (f"_{_SHOTS.value}shot" if _TASK.value == "mmlu" else "")
    workdir = epath.Path(_WORKDIR.value)  # local or gs://
    (workdir / "eval").mkdir(parents=True, exist_ok=True)
    (workdir / "eval" / f"{name}.json").write_text(json.dumps(result, indent=2))
    writer = SummaryWriter(str(workdir / "tensorboard"))
    for key in ("nats_per_token", "bits_per_byte", "acc", "acc_norm"):
        if key in result:
            writer.add_scalar(f"eval/{name}/{key}", result[key], trained.step)
    writer.close()
    shown = {k: v for k, v in result.items() if k != "questions"}
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
