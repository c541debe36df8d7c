"""What every command-line entry point shares: flag parsing that names a bad override, quiet library
logging, and user errors without tracebacks."""
import contextlib
import re
import sys

from absl import flags, logging
from ml_collections import config_flags

from openmoe2_jax import errors
from openmoe2_jax.configs import renames


# Warnings that tell a user nothing: orbax announces every read-only checkpoint manager (eval, sample,
# export and restore open the run's checkpoints read-only on purpose).
_SILENCED = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")


def _not_silenced(record) -> bool:
    return not any(s in record.getMessage() for s in _SILENCED)


def quiet_logging() -> None:
    """orbax and XLA log every save and backend probe at INFO; show warnings unless -v is given, and
    never the warnings in _SILENCED."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    absl_logger = logging.get_absl_logger()
    if _not_silenced not in absl_logger.filters:
        absl_logger.addFilter(_not_silenced)


@contextlib.contextmanager
def user_errors(*extra):
    """Turns a bad config, corpus or checkpoint (and `extra` types) into `error: ...` and exit 1."""
    try:
        yield
    except (*errors.USER_ERRORS, *extra) as e:
        raise SystemExit(f"error: {e}") from None


_OVERRIDE = re.compile(r"--(config(?:\.[A-Za-z0-9_]+)+)(?:=|$)")


def _override_keys(argv: list[str]) -> list[str]:
    """The `config.a.b` keys of the `--config.a.b=value` overrides in argv[1:], in order."""
    return [m.group(1) for arg in argv[1:] if (m := _OVERRIDE.match(arg))]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (pass as `app.run(main, flags_parser=cli.parse_flags)`), with bad config
    overrides as one `error:` line and a non-zero exit instead of a traceback.

    Refused: an override of a key the config does not have (`--config.model.nonexistent=1`), a value
    that does not parse as the key's type, and the same key given twice (`--config.data.paths=...`
    twice: which one wins would be a guess, so neither does).
    """
    if "config" in flags.FLAGS:  # CLIs with a config file; define_config_file has expanded sys.argv
        argv = expand_experiment(argv)
    keys = _override_keys(argv)
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        sys.exit(f"error: --{repeated[0]} is given {keys.count(repeated[0])} times; give each config "
                 "override once.")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --help to see the flags.")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these while applying a --config.a.b=value override.
        sys.exit(f"error: {_unknown_field(keys, e)}")


def expand_experiment(argv: list[str]) -> list[str]:
    """`--experiment=ID [--scale=S]` -> `--config=<its section file>:<variant>,<S>` (S default: cpu).

    ID is an experiment ID (`sec03/tc`) or one of the study's run names (`moetopk_100b_1e_8b1b7a_difflm`),
    resolved by experiments/registry.py; `--config.a.b=...` overrides then apply as to any config file.
    Only for CLIs with a --config file flag (train, data.prepare); elsewhere argv is returned unchanged."""
    given = [a for a in argv[1:] if a.startswith("--experiment=")]
    if not given:
        return argv
    from openmoe2_jax.configs import scales  # pylint: disable=import-outside-toplevel
    from openmoe2_jax.experiments import registry  # pylint: disable=import-outside-toplevel
    if len(given) > 1:
        sys.exit("error: --experiment is given more than once; give one experiment ID.")
    if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        sys.exit("error: give --experiment or --config, not both (--config.a.b=value overrides work with either).")
    scale = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--scale=")), "cpu")
    if scale not in scales.SCALES:
        sys.exit(f"error: --scale={scale!r}: expected one of {', '.join(scales.SCALES)}")
    try:
        number, variant = registry.resolve(given[0].split("=", 1)[1])
    except ValueError as e:
        sys.exit(f"error: --{e}")
    path = registry.section(number).__file__
    rest = [a for a in argv[1:] if not a.startswith(("--experiment=", "--scale="))]
    return [argv[0], f"--config={path}:{variant},{scale}", *rest]


def define_config_file(name: str, default: str, help_string: str):
    """config_flags.DEFINE_config_file, with an override of a field the config lacks as one `error:` line.

    ml_collections resolves the types of `--config.a.b=...` overrides against the default config as
    soon as the flag is defined (it reads sys.argv then), so a misspelt field fails here, at import;
    for the same reason `--experiment=ID` is turned into its `--config=...` here (expand_experiment).
    """
    sys.argv[:] = expand_experiment(sys.argv)
    try:
        return config_flags.DEFINE_config_file(name, default, help_string)
    except (AttributeError, KeyError) as e:
        sys.exit(f"error: {_unknown_field(_override_keys(sys.argv), e)}")


def _unknown_field(keys: list[str], error: Exception) -> str:
    """The message for an override whose path names a field the config does not have.

    ml_collections raises KeyError("'name'\\nDid you mean ...?"), sometimes wrapped in an AttributeError.
    """
    inner = error.args[0] if error.args else error
    text = str(inner.args[0] if isinstance(inner, BaseException) and inner.args else inner)
    name, *hint = text.splitlines()
    name = name.strip("\"' ")
    for key in keys:
        parts = key.split(".")
        if name in parts[1:]:
            parent = ".".join(parts[:parts.index(name, 1)])
            renamed = renames.new_name(".".join(parts[1:parts.index(name, 1) + 1]))
            if renamed:
                return (f"--{key}: the field {name!r} is now config.{renamed}; use --config.{renamed}=..."
                        + renames.HINTS.get(renamed, ""))
            return (f"--{key}: {parent} has no field {name!r}.{' ' + hint[0] if hint else ''} "
                    "Every field is defined in configs/base.py.")
    return f"cannot apply the config overrides {', '.join('--' + k for k in keys)}: {text}"
