"""The ``mrl`` command line: a thin click group over the library.

Each module in this package defines ``COMMANDS``, a list of click commands or groups, and is picked
up here. A user error (:class:`~mrl.errors.MRLError`) or an operating-system error such as a
read-only or full disk becomes one ``Error: ...`` line and exit status 1; click's usage errors (an
unknown option, a value of the wrong type) exit with status 2; any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from mrl.errors import MRLError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MRLError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            # A read-only, full or vanished output folder is the user's environment, not a bug.
            if exc.errno is None:
                raise
            where = f" {exc.filename}" if exc.filename is not None else ""
            raise click.ClickException(f"cannot access{where}: {exc.strerror}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mrl")
def cli() -> None:
    """Matryoshka Representation Learning: train nested embeddings, evaluate every prefix size,
    classify and search adaptively."""


for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    for _command in importlib.import_module(f"{__name__}.{_info.name}").COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="mrl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
