"""python -m openmoe2_jax.sample --workdir=DIR --prompt="In the beginning" [--length=64 --steps=64 ...]

Diffusion models: masked-diffusion sampling (low-confidence or random remasking, blocks, steps);
AR models: left-to-right sampling. Prints the text, forward passes and tokens/s.
"""
from absl import app, flags

from openmoe2_jax import cli
from openmoe2_jax.eval import generate
from openmoe2_jax.models.transformer import Transformer, with_groups
from openmoe2_jax.progress import Progress
from openmoe2_jax.runtime import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue (may be empty).")
_LENGTH = flags.DEFINE_integer("length", 64, "Tokens to generate.")
_STEPS = flags.DEFINE_integer("steps", 0, "Diffusion steps (0 = length: one token per step).")
_BLOCK = flags.DEFINE_integer("block_length", 0, "Diffusion block length (0 = length: one block).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 = Gumbel-max sampling.")
_REMASKING = flags.DEFINE_enum("remasking", "low_confidence", ["low_confidence", "random"], "")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")


def main(argv):
    del argv
    cli.quiet_logging()
    with cli.user_errors():
        trained = restore.load(_WORKDIR.value, _STEP.value)
    tok = trained.tokenizer
    # A sample is one row: each forward pass routes its tokens as one group (batch-level EC cannot
    # group them as training did, which routed groups of many rows; evaluation can, see eval).
    forward = generate.make_forward(Transformer(with_groups(trained.model_cfg, 1)), trained.params)
    prompt = tok.encode(_PROMPT.value)
    progress = Progress("sample", 0, "forward passes")
    if trained.config.objective.kind == "ar":
        sample = generate.ar_generate(forward, prompt, _LENGTH.value, tok.eot_id, tok.num_ids,
                                      _TEMPERATURE.value, _SEED.value, tok.decode, progress)
    else:
        with cli.user_errors(ValueError):
            sample = generate.diffusion_generate(
                forward, prompt, _LENGTH.value, _STEPS.value or _LENGTH.value,
                _BLOCK.value or _LENGTH.value, tok.mask_id, tok.num_ids, tok.eot_id, _TEMPERATURE.value,
                _REMASKING.value, _SEED.value, tok.decode, progress)
    print(_PROMPT.value + sample.text)
    print(f"[{len(sample.tokens)} tokens, {sample.forward_passes} forward passes, "
          f"{sample.tokens_per_second:.1f} tokens/s]")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
