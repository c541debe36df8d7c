"""What every command-line entry point shares: quiet library logging, and user errors without tracebacks."""
import contextlib

from absl import flags, logging

from openmoe2_jax import errors


def quiet_logging() -> None:
    """orbax and XLA log every save and backend probe at INFO; show warnings unless -v is given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def user_errors(*extra):
    """Turns a bad config, corpus or checkpoint (and `extra` types) into `error: ...` and exit 1."""
    try:
        yield
    except (*errors.USER_ERRORS, *extra) as e:
        raise SystemExit(f"error: {e}") from None
