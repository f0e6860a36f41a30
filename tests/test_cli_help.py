"""A CLI that teaches: every command's help has an example, every option says what it does and
its default, choices are listed."""

import pytest
import typer

from edgeseg.cli import app

COMMANDS = typer.main.get_command(app).commands


def test_the_commands():
    assert set(COMMANDS) >= {"train", "evaluate", "predict", "export", "quantize", "bench", "compress", "prune",
                             "distill"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_has_an_example(name):
    doc = COMMANDS[name].help or ""
    assert "Example:" in doc and f"edgeseg {name}" in doc.split("Example:")[1], doc


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_described(name):
    for p in COMMANDS[name].params:
        if p.param_type_name == "option":
            assert (p.help or "").strip(), f"edgeseg {name} {p.opts[0]} has no help text"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_defaults_are_shown(name):
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, [name, "--help"], terminal_width=200)
    assert r.exit_code == 0
    valued = [p for p in COMMANDS[name].params if p.param_type_name == "option" and not p.is_flag
              and p.default is not None and not p.required]
    for p in valued:
        assert "default" in " ".join((p.help or "").lower().split()) or p.show_default is not False, p.opts
    if valued:
        assert "[default:" in r.stdout, r.stdout
