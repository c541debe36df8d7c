"""The errors that mean "your input is wrong" (not a bug): CLIs print them without a traceback."""
from openmoe2_jax.data.sources import CorpusError
from openmoe2_jax.data.tokenizer import VocabularyError
from openmoe2_jax.train.checkpoint import CheckpointError
from openmoe2_jax.validation import ConfigError

# FloatingPointError: the loss diverged (NaN/inf); the message says at which step and what was kept.
USER_ERRORS = (ConfigError, CorpusError, CheckpointError, VocabularyError, FloatingPointError)
