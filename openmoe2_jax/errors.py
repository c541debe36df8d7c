"""The errors that mean "your input is wrong" (not a bug): CLIs print them without a traceback.

The bottom layer: it imports nothing, and every module that raises one of these imports it from here.
"""


class ConfigError(ValueError):
    """A config field has a value that is not allowed."""


class CorpusError(ValueError):
    """A corpus file is missing, unreadable, malformed or empty."""


class VocabularyError(ValueError):
    """A checkpoint, run or token file belongs to another vocabulary than the one asked for."""


class CheckpointError(ValueError):
    """A checkpoint directory is unusable or holds a different model."""


class CorruptCheckpointError(CheckpointError):
    """One checkpoint cannot be read (truncated, partially written, damaged)."""


class ExportError(ValueError):
    """An export directory is unusable: missing or malformed files, or tensors config.json does not
    describe."""


# FloatingPointError: the loss diverged (NaN/inf); the message says at which step and what was kept.
USER_ERRORS = (ConfigError, CorpusError, CheckpointError, VocabularyError, FloatingPointError)
