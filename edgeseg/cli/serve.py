"""Commands that run and watch a model in use: serve, store (add/activate/rollback/list), monitor,
and ``export --format triton`` (registered by ``ship.py``'s export; the work is edgeseg/export/triton.py).

The service itself is torch-free (:mod:`edgeseg.serve`); only ``edgeseg serve`` with no PATH
touches the toolkit, to export the embedded demo teacher to a bundle the first time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.app import _setup_logging, command

DEMO_BUNDLE = Path("runs") / "serve-demo" / "bundle"
STORE_ACTIONS = ("add", "activate", "rollback", "list")


def _port(value: str) -> int:
    """--port: a whole number 1-65535 (a parser, so click refuses anything else with one line)."""
    if isinstance(value, int):
        return value
    if not str(value).strip().isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"--port must be a whole number from 1 to 65535, got {value!r}")
    return int(value)


def _demo_bundle() -> Path:
    """The README's one-command service: the embedded demo teacher, exported once to a bundle."""
    if (DEMO_BUNDLE / "edgeseg.json").is_file():
        return DEMO_BUNDLE
    from edgeseg.compress.recipe import EMBEDDED
    from edgeseg.export.pipeline import export_bundle

    typer.echo(f"exporting the embedded demo teacher to {DEMO_BUNDLE} (once; later runs reuse it)", err=True)
    export_bundle(EMBEDDED / "teacher", DEMO_BUNDLE, data=EMBEDDED, split="val")
    return DEMO_BUNDLE


@command
def serve(
    path: Optional[Path] = typer.Argument(None, help="A model store, or one bundle folder served as a one-version "
                                          "store. Default: the embedded demo teacher, exported once to "
                                          "runs/serve-demo/bundle."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; beyond 127.0.0.1 the admin endpoints need --token."),
    port: int = typer.Option(8000, parser=_port, metavar="PORT", help="TCP port (1-65535)."),
    token: Optional[str] = typer.Option(None, envvar="EDGESEG_SERVE_TOKEN", help="Bearer token for the admin "
                                        "endpoints (activate, rollback); default: none (admin on 127.0.0.1 only)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Folder for the rotating JSON-lines request log "
                                       "(default: no log)."),
    keep_images: bool = typer.Option(False, "--keep-images", help="Also save each request's image beside the log."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details to stderr."),
):
    """Serve a bundle or a model store over HTTP (segment, feedback, health, models, metrics).

    Example: edgeseg serve runs/compressed/bundle --port 8000 --log runs/serve-log
    """
    _setup_logging(verbose)
    from edgeseg.serve import require
    from edgeseg.serve.app import create_app, is_loopback

    uvicorn = require("uvicorn")
    target = path if path is not None else _demo_bundle()
    app = create_app(target, token=token, host=host, log_dir=log, keep_images=keep_images)
    svc = app.state.service
    if svc.current is None:
        from edgeseg.serve.service import NotReady

        raise NotReady(f"nothing to serve: {svc.not_ready}")
    admin = "token" if token else ("localhost only" if is_loopback(host) else "off (no --token)")
    typer.echo(f"serving {svc.current.version} (sha256 {svc.current.sha256[:12]}...) on http://{host}:{port} "
               f"(docs: /docs; admin: {admin})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if verbose else "warning")


@command
def store(
    action: str = typer.Argument(..., help=f"One of: {', '.join(STORE_ACTIONS)}."),
    store_dir: Path = typer.Argument(..., metavar="STORE", help="The model store folder (created by add)."),
    target: Optional[str] = typer.Argument(None, metavar="[BUNDLE|VERSION]", help="add: the bundle folder to copy "
                                           "in; activate: the version to switch to."),
    version: Optional[str] = typer.Option(None, "--version", help="add: the version name to store the bundle under "
                                          "(required for add)."),
    activate: bool = typer.Option(False, "--activate", help="add: also make the new version the active one."),
):
    """Manage a model store: add a verified bundle as a version, activate one, roll back, list.

    Example: edgeseg store add models/ runs/compressed/bundle --version 2 --activate
    """
    from edgeseg.errors import ConfigError
    from edgeseg.runtime.files import dumps
    from edgeseg.serve.store import ModelStore

    if action not in STORE_ACTIONS:
        raise ConfigError(f"unknown store action {action!r}; choose one of {', '.join(STORE_ACTIONS)}")
    wants = {"add": "BUNDLE", "activate": "VERSION"}.get(action)
    if wants and target is None:
        raise ConfigError(f"edgeseg store {action} needs {wants}: edgeseg store {action} STORE {wants}")
    if not wants and target is not None:
        raise ConfigError(f"edgeseg store {action} takes no {target!r}")
    if (version is not None or activate) and action != "add":
        raise ConfigError("--version and --activate belong to `edgeseg store add`")
    if action == "add":
        if version is None:
            raise ConfigError("edgeseg store add needs --version V (the name this bundle is stored under)")
        st = ModelStore(store_dir, create=True)
        result = {"added": version, "sha256": st.add(Path(target), version)}
        if activate:
            result["active"] = st.activate(version).version
    elif action == "activate":
        result = {"active": ModelStore(store_dir).activate(target).version}
    elif action == "rollback":
        result = {"active": ModelStore(store_dir).rollback().version}
    else:
        result = ModelStore(store_dir).listing()
    typer.echo(dumps(result))


@command
def monitor(
    log: Path = typer.Argument(..., help="A request log: the folder given to `edgeseg serve --log`, or one file."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Folder for summary.json, summary.md and "
                                       "monitor.png (default: print the summary only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier monitor output."),
):
    """Summarise a service's request log: latency percentiles, drift rate over time, area shift,
    live Dice per model version (from feedback), with a PNG plot.

    Example: edgeseg monitor runs/serve-log -o runs/monitor
    """
    from edgeseg.outputs import check_output, mark
    from edgeseg.runtime.files import dumps
    from edgeseg.serve.monitor import summarise, write_report

    if out is not None:
        check_output(out, "monitor", inputs=[log], overwrite=overwrite)
    summary = summarise(log)
    if out is not None:
        write_report(summary, out, marker=lambda d: mark(d, "monitor"))
    public = {k: v for k, v in summary.items() if not k.startswith("_")}  # "_series": the plot's raw points
    typer.echo(dumps(public | ({"out": str(out)} if out is not None else {})))


def export_triton_cli(model: Path, out: Path, overwrite: bool, others: dict) -> None:
    """``edgeseg export MODEL -o OUT --format triton``: the output policy, then the repository.
    An option of the other formats would be silently ignored, so it is refused by name."""
    from edgeseg.errors import ConfigError
    from edgeseg.export.triton import export_triton
    from edgeseg.outputs import check_output, mark
    from edgeseg.runtime.files import dumps

    given = [flag for flag, on in others.items() if on not in (None, False)]
    if given:
        raise ConfigError(f"{', '.join(given)}: not used by --format triton, which packs the bundle (or engine) "
                          "as it is")
    check_output(out, "triton", inputs=[model], overwrite=overwrite)
    export_triton(model, out, marker=lambda d: mark(d, "triton"))
    typer.echo(dumps({"triton_repository": str(out), "models": sorted(p.name for p in out.iterdir() if p.is_dir())}))
