"""What every CLI command shares: the app, one context object, the options, and the one
table from exception type to message and exit code.

Exit codes (:class:`ExitCode`): 0 done; 1 some items failed (import, verify); 2 usage or
configuration error; 3 store, index or key problem.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from node import logs
from node.access import NotAllowedError
from node.api import Node
from node.errors import ConfigError, KeyringError, LibraryError, NodeError
from node.index.query import QueryError
from node.settings import load

app = typer.Typer(help="support-node: a DICOM node that keeps images encrypted and AI-ready.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
keys_app = typer.Typer(help="List and rotate the encryption keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
labels_app = typer.Typer(help="Label maps (masks) of stored images.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

NameOpt = Annotated[str | None, typer.Option(
    "--patient-name", help="Patient name, wildcards * ? (case-insensitive), e.g. 'doe*'.")]
DateOpt = Annotated[str | None, typer.Option(
    "--study-date", help="Study date or range: 20240101, 20240101-20240131, -20240131.")]
ModalityOpt = Annotated[str | None, typer.Option("--modality", help="e.g. CT.")]
AccessionOpt = Annotated[str | None, typer.Option("--accession", help="Accession number.")]
HomeOpt = Annotated[Path | None, typer.Option("--home", help="Home folder (default ./var).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file.")]


class Blank(enum.StrEnum):
    show = "show"
    hide = "hide"
    only = "only"


BlankOpt = Annotated[Blank, typer.Option(
    "--blank", help="Images the filter flagged blank: show (default), hide, or only them.")]
_BLANK_CHOICES: dict[Blank, bool | None] = {Blank.show: None, Blank.hide: False,
                                            Blank.only: True}


# --home / --config given before the command (``support-node --config FILE serve``): the
# defaults for the command's own options, set again by every invocation.
_BEFORE: dict[str, Path | None] = {"home": None, "config": None}


@app.callback()
def _options_before_the_command(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """support-node: a DICOM node that keeps images encrypted and AI-ready. --home and
    --config may come before the command or after it."""
    _BEFORE.update(home=home, config=config)


class Context:
    """What every command gets: the settings, read once."""

    def __init__(self, home: Path | None, config: Path | None,
                 overrides: dict[str, dict[str, Any]] | None = None,
                 service: bool = False) -> None:
        self.settings = load(config=config or _BEFORE["config"],
                             home=home or _BEFORE["home"], overrides=overrides)
        # One-shot commands report through their own output; the log is for the service.
        level = self.settings.log.level
        logs.configure(level if service or level in ("WARNING", "ERROR") else "WARNING")

    def node(self, create_keys: bool = False) -> Node:
        """The node of this home. ``create_keys``: a home without a key file gets one,
        unless its store or index holds data (KeyringError: see ``node.cli.home``)."""
        from node.cli.home import check_new_keys

        path = self.settings.keys.file
        if not create_keys and not path.exists():
            raise KeyringError(f"key file not found: {path} (run `support-node init` first, "
                               "or give the node's --home)")
        if create_keys:
            check_new_keys(self.settings)
        return Node.from_settings(self.settings, create_keys=create_keys)


class ExitCode(enum.IntEnum):
    DONE = 0
    SOME_FAILED = 1
    USAGE = 2
    SYSTEM = 3


# Exception type -> (message prefix, exit code), most specific first; the one place where
# errors become exit codes (a test checks every NodeError subclass is reached).
ERRORS: tuple[tuple[type[NodeError], str, ExitCode], ...] = (
    (ConfigError, "configuration: ", ExitCode.USAGE),
    (KeyringError, "keys: ", ExitCode.SYSTEM),
    (QueryError, "query: ", ExitCode.USAGE),
    (LibraryError, "library: ", ExitCode.USAGE),
    (NotAllowedError, "not allowed: ", ExitCode.USAGE),
    (NodeError, "", ExitCode.SYSTEM),
)


def fail(message: str, code: int) -> typer.Exit:
    # escaped: a message naming a config section ("[dimse.callers]") is not markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def run(fn: Any) -> Any:
    """Runs a command body; NodeErrors become a message and an exit code, not a traceback."""
    try:
        return fn()
    except NodeError as exc:
        for kind, prefix, code in ERRORS:
            if isinstance(exc, kind):
                raise fail(f"{prefix}{exc}", code) from None
        raise  # unreachable: NodeError is the last row


def counted(counts: Mapping[str, int], empty: str) -> str:
    """``3 processed, 1 refused``: counts by name, sorted by name; ``empty`` for none."""
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or empty


def plural(n: int, noun: str) -> str:
    """``1 instance``, ``2 instances``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def print_table(table: Table) -> None:
    """Prints ``table`` at its natural width, whatever the terminal's: a UID cut short by an
    ellipsis could not be given to the next command (``ls`` → ``get``)."""
    natural = Measurement.get(out, out.options.update_width(1 << 16), table).maximum
    Console(file=out.file, width=max(natural, out.width), soft_wrap=True).print(table)


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)
