"""The ``edgeseg`` command line: parse, build a config, call one library function, print.

Results go to stdout; logs and progress bars to stderr. Every ``EdgesegError`` becomes one
line ``error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgeseg.runtime.errors import EdgesegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Make trained SegFormer segmentation models small, fast and verified for edge devices.",
)

EXIT_BAD_INPUT = 2


@app.callback()
def _root() -> None:
    """edgeseg: compress, export, verify and benchmark SegFormer segmentation models."""


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def command(fn):
    """Register a command whose bad-input errors print as one line and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
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

    return app.command()(wrapper)


def _classes(value: Optional[str]) -> tuple[str, ...]:
    from edgeseg.errors import ConfigError

    if value is None:
        return ("background", "foreground")
    names = tuple(c.strip() for c in value.split(",") if c.strip())
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--classes needs at least two distinct comma-separated names, got {value!r}")
    return names


@command
def train(
    data: Path = typer.Argument(..., help="Folder with images/ and masks/ (optionally splits/*.txt)."),
    out: Path = typer.Option(Path("runs/teacher"), "-o", "--out", help="Checkpoint directory to write."),
    variant: str = typer.Option("b0", help="SegFormer variant: b0..b5, or tiny (tests, demos)."),
    config: Optional[Path] = typer.Option(None, help="A SegformerConfig JSON instead of a variant."),
    init: Optional[Path] = typer.Option(None, help="Local HF checkpoint directory to fine-tune."),
    train_split: str = typer.Option("train", help="Split name (DATA/splits/NAME.txt) or file."),
    val_split: str = typer.Option("val", help="Split name or file for validation."),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names; default binary."),
    size: int = typer.Option(256, help="Square input size in pixels (multiple of 32)."),
    epochs: int = typer.Option(20),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(6e-4),
    warmup_steps: int = typer.Option(100),
    device: str = typer.Option("auto", help="cpu, cuda or auto."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after the epoch that passes N minutes."),
    seed: int = typer.Option(0),
    no_augment: bool = typer.Option(False, "--no-augment"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Train or fine-tune a SegFormer; writes a standard HF checkpoint directory."""
    _setup_logging(verbose)
    from edgeseg.train import TrainConfig
    from edgeseg.train import train as run_train

    cfg = TrainConfig(
        data=str(data), out=str(out), variant=variant, config_file=str(config) if config else None,
        init=str(init) if init else None, train_split=train_split, val_split=val_split,
        classes=_classes(classes), size=size, epochs=epochs, batch_size=batch_size, lr=lr,
        warmup_steps=warmup_steps, device=device, threads=threads, time_budget_min=time_budget, seed=seed,
        augment=not no_augment, progress=not quiet,
    )
    path = run_train(cfg)
    meta = json.loads((path / "edgeseg_checkpoint.json").read_text())
    typer.echo(json.dumps({"checkpoint": str(path), "val": meta["metrics"].get("val", {}),
                           "epoch": meta["metrics"].get("epoch")}, indent=2))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
