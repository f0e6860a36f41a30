"""The Typer app every command registers on, and what they share: one-line errors, logging,
option checks before any work, ``--version`` and ``main``.

Results go to stdout; logs and progress bars to stderr. Every ``EdgesegError`` becomes one
line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import logging
import sys

import typer

from edgeseg.checks import check_options
from edgeseg.runtime.errors import EdgesegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Make trained SegFormer segmentation models small, fast and verified for edge devices.",
)

EXIT_BAD_INPUT = 2


def _version(value: bool) -> None:
    if value:
        from edgeseg import __version__

        typer.echo(f"edgeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print edgeseg's version and exit.")) -> None:
    """edgeseg: compress, export, verify and benchmark SegFormer segmentation models.

    Start with `edgeseg compress` (no arguments: the embedded demo teacher), or
    `edgeseg COMMAND --help` for a command's options and an example.
    """


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # library warnings become one log line each; none is silenced globally


def command(fn):
    """Register a command whose bad-input errors print as one line and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            check_options(fn.__name__, kwargs)  # NaN, inf, out of range: refused by name before any work
            return fn(*args, **kwargs)
        except EdgesegError as exc:
            msg = " ".join(str(exc).split())
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            typer.echo("error: out of memory (input too large?)", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except OSError as exc:  # a full disk or read-only file system met outside edgeseg's own writers
            from edgeseg.runtime.files import WRITE_ERRNOS

            if exc.errno not in WRITE_ERRNOS:
                raise
            typer.echo(f"error: cannot write {exc.filename or 'the output'}: {exc.strerror}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return app.command()(wrapper)


def main() -> None:  # pragma: no cover - run as a subprocess by the tests
    """The ``edgeseg`` command: click's usage errors (unknown option, missing argument, bad
    choice) become one ``error:`` line naming the help to read, like every other bad input."""
    try:  # typer >= 0.2x vendors click as typer._click; older ones use click itself
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover
        from click import exceptions as click_exc

    try:
        rc = app(prog_name="edgeseg", standalone_mode=False)
    except click_exc.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `edgeseg` or `edgeseg CMD`: the help is the answer
            typer.echo(exc.format_message())
            sys.exit(0)
        where = exc.ctx.command_path if exc.ctx is not None else "edgeseg"
        msg = " ".join(exc.format_message().split())
        typer.echo(f"error: {msg[0].lower() + msg[1:] if msg else msg} (see `{where} --help`)", err=True)
        rc = EXIT_BAD_INPUT
    except click_exc.Abort:
        typer.echo("error: interrupted", err=True)
        rc = 130
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
