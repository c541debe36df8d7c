"""python -m openmoe2_jax.export --workdir=RUN --out=DIR [--step=N] [--dtype=float32|bfloat16]

Writes the parameters of RUN's latest (or --step) checkpoint, without the optimizer state, to the new
directory DIR: model.safetensors (or model-0000i-of-0000K.safetensors shards and
model.safetensors.index.json above --max_shard_bytes), config.json (the whole architecture) and, for a
bpe:N run, the vocabulary in DIR/tokenizer/. docs/export.md describes the format; the NumPy forward
pass openmoe2_jax/export/reference.py computes logits from those files alone. Prints a JSON summary.
"""
import json

from absl import app, flags

from openmoe2_jax import cli
from openmoe2_jax.export import writer
from openmoe2_jax.export.layout import ExportError

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export.", required=True)
_OUT = flags.DEFINE_string("out", None, "New (or empty) directory to write the export to.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the stored tensors.")
_SHARD = flags.DEFINE_integer("max_shard_bytes", writer.DEFAULT_MAX_SHARD_BYTES,
                              "Above this many bytes of tensors, write several shard files + an index.")
_GROUP = flags.DEFINE_integer("tokens_per_group", 0, "Batch-level routing: tokens of one routing group "
                              "in training; 0 = what the checkpoint records (only older checkpoints "
                              "need it).")


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors(ExportError):
        result = writer.export_workdir(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value,
                                       _SHARD.value, _GROUP.value)
    summary = dict(out=_OUT.value, step=result["source"]["step"], dtype=result["dtype"],
                   files=result["files"], bytes=result["bytes"], seconds=round(result["seconds"], 2),
                   tokenizer=result["tokenizer"]["name"], ffn=result["ffn"], objective=result["objective"])
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
