"""The ``edgeseg`` command line: parse, build a config, call one library function, print.

``app.py`` holds the Typer app, the error handling every command shares and ``main``; the
commands live by what they do: ``make.py`` (train, prune, distill, compress), ``ship.py``
(export, quantize), ``use.py`` (evaluate, predict, bench); ``options.py`` parses shared options.
"""

from edgeseg.cli.app import app, main
from edgeseg.cli import make, ship, use  # noqa: F401,E402 - importing registers the commands

__all__ = ["app", "main"]
