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
    previous = _terminate_as_interrupt()
    try:
        app(args=argv, prog_name="polyprune")
    except UserError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except OSError as e:  # full disk, permissions, read-only file system, a file where a folder is meant
        from .io import USER_ERRNOS, os_error_line
        if e.errno not in USER_ERRNOS:
            raise
        sys.stderr.write(f"error: {os_error_line(e)}\n")
        sys.exit(2)
    except UnicodeDecodeError as e:  # a reader without its own message (the known ones name their file)
        sys.stderr.write(f"error: an input file is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8\n")
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: staged folders are already removed
        _interrupted(e)
    except SystemExit as e:  # typer turns Ctrl-C into a silent exit 130: say what was kept
        ki = _interrupt_in(e)
        if ki is None:
            raise
        _interrupted(ki)
    finally:
        if previous is not None:  # embedded use (tests): leave the caller's handler as it was
            import signal
            signal.signal(signal.SIGTERM, previous)


def _interrupt_in(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind an exception (typer chains it under its Exit(130)), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _interrupted(e: KeyboardInterrupt) -> None:
    sys.stderr.write(f"{getattr(e, 'message', None) or 'interrupted; nothing was written'}\n")
    sys.exit(130)


def _terminate_as_interrupt():
    """SIGTERM unwinds like Ctrl-C, so staging folders are removed and locks released; returns the
    previous handler (None when none could be set)."""
    import signal

    seen = []

    def handler(signum, frame):
        if seen:  # already unwinding: a second TERM must not cut the clean-up short
            return
        seen.append(signum)
        raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): keep the default
        return None


def examples(*commands: str) -> str:
    """A command's help epilog: its examples, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {c}" for c in commands)


def fail(message: str) -> None:
    """Raise a bad-input error from a command."""
    raise UserError(message)
