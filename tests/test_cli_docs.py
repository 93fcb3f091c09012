"""Every command and option of the CLI is documented (sqlite-utils' test_docs idea)."""

import click
import pytest
from click.testing import CliRunner

from mrl.cli import cli


def _commands(group: click.Group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(cli))


def test_core_commands_exist():
    names = {path[0] for path, _ in COMMANDS}
    assert {"train", "eval", "embed", "demo"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_command_has_help(path, command):
    result = CliRunner().invoke(cli, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert command.help and command.help.strip(), f"mrl {' '.join(path)} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("help", "version"):
            assert param.help, f"option {param.opts} of mrl {' '.join(path)} has no help text"
