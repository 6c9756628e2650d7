"""``support-node tokens``: web API tokens (create, list, revoke)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from node.access import TokenScope
from node.cli.common import ConfigOpt, Context, HomeOpt, app, fail, out, print_table, run
from node.errors import ConfigError
from node.settings import valid_hospital

tokens_app = typer.Typer(help="Tokens for the web API (DICOMweb): each is scoped to a "
                              "hospital (or all) and to read, write, readwrite or admin.",
                         no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("create")
def create(name: Annotated[str, typer.Argument(help="A name for the token (who holds it).")],
           hospital: Annotated[str | None, typer.Option(
               help="The hospital it sees and stores into (default: every hospital; its "
                    "stores go to 'default').")] = None,
           scope: Annotated[TokenScope, typer.Option(
               help="read (QIDO, WADO), write (STOW), readwrite, or admin.")] = TokenScope.READ,
           pseudonymous: Annotated[bool, typer.Option(
               "--pseudonymous",
               help="It sees patients by pseudonym only: no names, IDs, birth dates or "
                    "other identifying attributes, in QIDO, WADO and the AI page.")] = False,
           home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Create a token; its secret is printed once, on the last line, and never again."""
    def body() -> None:
        if hospital is not None and not valid_hospital(hospital):
            raise ConfigError(f"--hospital: not a valid hospital name: {hospital!r}")
        with Context(home, config).node() as node:
            secret = node.core.tokens.create(name, hospital, scope, pseudonymous)
        kind = ", pseudonymous" if pseudonymous else ""
        out.print(f"token {name!r} created ({scope.value}{kind}, hospital "
                  f"{hospital or 'every'}); it is shown only now:", highlight=False)
        out.print(secret, highlight=False, soft_wrap=True)
    run(body)


@tokens_app.command("list")
def list_(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Tokens by name, with their hospital, scope and state (never their secrets)."""
    def body() -> None:
        with Context(home, config).node() as node:
            tokens = node.core.tokens.list()
        table = Table("name", "hospital", "scope", "sees", "created", "state")
        for t in tokens:
            state = f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "active"
            table.add_row(t.name, t.hospital or "(every)", t.scope,
                          "pseudonyms" if t.pseudonymous else "identities",
                          f"{t.created_at:%Y-%m-%d %H:%M}", state)
        print_table(table)
    run(body)


@tokens_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The token's name.")],
           home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Revoke a token: requests with it get 401 from now on."""
    def body() -> None:
        with Context(home, config).node() as node:
            if not node.core.tokens.revoke(name):
                raise fail(f"no active token called {name!r}", 2)
        out.print(f"token {name!r} revoked", highlight=False)
    run(body)
