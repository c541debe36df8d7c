"""Tokenize a corpus once into token shards that training memory-maps.

  python -m openmoe2_jax.data.prepare --config=configs/default.py \
      --config.data.source=jsonl --config.data.paths='("corpus/*.jsonl",)' --output_dir=tokens/

then train with --config.data.source=prepared --config.data.paths='("tokens/",)'. With
--config.data.tokenizer=bpe:N the vocabulary is trained on the training split and saved beside the
shards (bpe_N.tiktoken, bpe_N.json); meta.json records its name and sha256.
"""
from absl import app, flags

from openmoe2_jax import cli, configs, validation
from openmoe2_jax.data import bpe, pipeline

_CONFIG = cli.define_config_file("config", configs.path("default"), "Config file.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Directory for train.npy, validation.npy, meta.json (and a bpe:N vocabulary).",
    required=True)


def main(argv):
    del argv
    cli.quiet_logging()
    config = _CONFIG.value
    with cli.user_errors():
        validation.validate(config)
        if config.data.source == "prepared":
            raise validation.ConfigError("config.data.source = 'prepared': give the raw corpus to prepare.")
        split = pipeline.read_split(config.data, config.eval.seed)  # the split's seed
        tokenizer = bpe.run_tokenizer(config.data.tokenizer, (), split.train)  # bpe:N: trained afresh
        corpus = pipeline.load_corpus(config.data, tokenizer, config.eval.seed, split)
        pipeline.write_prepared(_OUTPUT_DIR.value, corpus, tokenizer, config.data, config.eval.seed)
    print(f"wrote {_OUTPUT_DIR.value}: {corpus.counts}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
