"""The plugin hook of the `medimg` group: commands registered under the entry-point group `medimg.commands` are
added to it (medimg-benchmark's `benchmark`); a broken or clashing plugin is left out with a warning."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import click
import pytest
from click.testing import CliRunner

from medimg_core.cli import COMMANDS_ENTRY_POINT_GROUP, add_plugin_commands


@click.command()
@click.option("--name", default="world")
def hello(name: str) -> None:
    """Say hello."""
    click.echo(f"hello {name}")


NOT_A_COMMAND = 42


@pytest.fixture
def plugins(monkeypatch):
    """Fake entry points (a module `fake_medimg_plugin` holds the objects they name)."""
    module = types.ModuleType("fake_medimg_plugin")
    module.hello = hello
    module.not_a_command = NOT_A_COMMAND
    monkeypatch.setitem(sys.modules, "fake_medimg_plugin", module)
    registered: list[importlib.metadata.EntryPoint] = []

    def entry_points(**kwargs):
        assert kwargs == {"group": COMMANDS_ENTRY_POINT_GROUP}
        return list(registered)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    def add(name: str, value: str) -> None:
        registered.append(importlib.metadata.EntryPoint(name, value, COMMANDS_ENTRY_POINT_GROUP))

    return add


def _group() -> click.Group:
    @click.group()
    def group() -> None:
        """A fresh group."""

    @group.command()
    def info() -> None:
        click.echo("built-in info")

    return group


def test_a_registered_command_joins_the_group_and_runs(plugins):
    plugins("greet", "fake_medimg_plugin:hello")
    plugins("greet", "fake_medimg_plugin:hello")  # the same entry point seen twice: added once, no warning
    group = _group()
    assert add_plugin_commands(group) == ["greet"]
    result = CliRunner().invoke(group, ["greet", "--name", "medimg"])
    assert result.exit_code == 0 and result.output == "hello medimg\n"
    assert "greet" in CliRunner().invoke(group, ["--help"]).output


def test_broken_or_clashing_plugins_are_left_out_with_a_warning(plugins):
    plugins("info", "fake_medimg_plugin:hello")
    plugins("missing", "no_such_module_for_medimg:cmd")
    plugins("number", "fake_medimg_plugin:not_a_command")
    plugins("greet", "fake_medimg_plugin:hello")
    group = _group()
    with pytest.warns(RuntimeWarning) as caught:
        assert add_plugin_commands(group) == ["greet"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3
    assert "'info' (fake_medimg_plugin:hello) is left out: `medimg` already has a command" in messages[0]
    assert "'missing' (no_such_module_for_medimg:cmd) is left out: it failed to load (ModuleNotFoundError" in messages[1]
    assert "'number' (fake_medimg_plugin:not_a_command) is left out: expected a click command, got int" in messages[2]
    assert CliRunner().invoke(group, ["info"]).output == "built-in info\n"  # the built-in is kept


def test_no_plugin_leaves_the_group_as_it_is(plugins):
    group = _group()
    assert add_plugin_commands(group) == [] and list(group.commands) == ["info"]
