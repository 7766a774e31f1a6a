"""The ``polyprune`` command line (typer). Thin: parse → config → library call.

Sub-commands live in ``polyprune.commands.*`` and register themselves on ``app``."""
from __future__ import annotations

import sys

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune multilingual LLMs with language-aware calibration; measure per language.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect the data available locally.")
app.add_typer(data_app, name="data")


def _no_type_placeholder(self, ctx):  # the help text says what to give; "<str>" only adds noise
    return None


for _cls in (getattr(typer.core, "TyperOption", None), getattr(typer.core, "TyperArgument", None)):
    if _cls is not None and hasattr(_cls, "display_type_rich"):
        _cls.display_type_rich = _no_type_placeholder


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    from .progress import setup_logging
    setup_logging(verbose)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input → one line on stderr, exit 2 (``argv``: arguments, default sys.argv)."""
    from . import commands  # noqa: F401  (registers sub-commands)
    from .progress import quiet_third_party
    quiet_third_party()
    if not sys.stdout.isatty():  # whole lines only, so tables never interleave mid-line with log records
        try:
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            pass
    try:
        app(args=argv, prog_name="polyprune")
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


def examples(*commands: str) -> str:
    """A command's help epilog: its examples, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {c}" for c in commands)


def fail(message: str) -> None:
    """Raise a bad-input error from a command."""
    raise UserError(message)
