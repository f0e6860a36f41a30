"""The ``edgeseg`` command line: parse, build a config, call one library function, print.

``app.py`` holds the Typer app, the error handling every command shares and ``main``; the
commands live by what they do: ``make.py`` (train, prune, distill, compress), ``ship.py``
(export, quantize), ``use.py`` (evaluate, predict, bench), ``explain.py``, ``tune.py``, ``serve.py``
(serve, store, monitor); ``options.py`` parses shared options. Import order is the order
``edgeseg --help`` lists them: the model workflow first, then the service.
"""

from edgeseg.cli.app import app, main
from edgeseg.cli import make, ship, use  # noqa: F401,E402 - importing registers the commands
from edgeseg.cli import explain, tune, serve  # noqa: F401,E402,I001 - after the workflow in --help

__all__ = ["app", "main"]
