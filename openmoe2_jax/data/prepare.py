"""Tokenize a corpus once into token shards that training memory-maps.

  python -m openmoe2_jax.data.prepare --config=openmoe2_jax/configs/tiny.py \
      --config.data.source=jsonl --config.data.paths='("corpus/*.jsonl",)' --output_dir=tokens/

then train with --config.data.source=prepared --config.data.paths='("tokens/",)'.
"""
from absl import app, flags

from openmoe2_jax import cli, configs, validation
from openmoe2_jax.data import pipeline
from openmoe2_jax.data.tokenizer import get_tokenizer

_CONFIG = cli.define_config_file("config", configs.path("tiny"), "Config file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for train.npy, validation.npy, meta.json.",
                                  required=True)


def main(argv):
    del argv
    cli.quiet_logging()
    config = _CONFIG.value
    with cli.user_errors():
        validation.validate(config)
        if config.data.source == "prepared":
            raise validation.ConfigError("config.data.source = 'prepared': give the raw corpus to prepare.")
        tokenizer = get_tokenizer(config.data.tokenizer)
        corpus = pipeline.load_corpus(config.data, tokenizer, config.seed)
        pipeline.write_prepared(_OUTPUT_DIR.value, corpus, tokenizer, config.data, config.seed)
    print(f"wrote {_OUTPUT_DIR.value}: {corpus.counts}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
