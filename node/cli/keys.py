"""The key commands: keys list, keys rotate, keys reencrypt. Key material is never
printed: ids, sizes, creation times and which key is active."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from node.cli.common import ConfigOpt, Context, HomeOpt, err, keys_app, out, progress, run
from node.crypto.keyring import Keyring


@keys_app.command("list")
def keys_list(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """List key ids, sizes, creation times and which one is active (never the keys)."""
    def body() -> None:
        ctx = Context(home, config)
        keyring = Keyring.load(ctx.settings.keys.file)
        table = Table("id", "bits", "created", "active", box=None)
        for info in keyring.infos():
            table.add_row(str(info.id), str(info.bits), info.created, "yes" if info.active else "")
        out.print(table)
    run(body)


@keys_app.command("rotate")
def keys_rotate(home: HomeOpt = None, config: ConfigOpt = None,
                bits: Annotated[int | None, typer.Option(help="128 or 256.")] = None,
                reencrypt: Annotated[bool, typer.Option(
                    help="Re-encrypt every object under the new key.")] = False) -> None:
    """Add a new key and make it active; old keys keep reading old objects. Safe while the
    node runs: it writes under the new key from its next object on, and reads what this
    rewrites. Interrupted re-encryption: run `keys reencrypt`."""
    def body() -> None:
        ctx = Context(home, config)
        if not ctx.settings.keys.file.exists():
            ctx.node().close()  # raises: key file not found (run init first)
        _, key = Keyring.rotate(ctx.settings.keys.file, bits=bits)
        out.print(f"key {key.id} ({key.bits} bits) is now active")
        if reencrypt:
            _reencrypt(ctx)
    run(body)


@keys_app.command("reencrypt")
def keys_reencrypt(home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Rewrite every object still under an older key under the active one (resumes an
    interrupted `keys rotate --reencrypt`; safe while the node runs)."""
    def body() -> None:
        _reencrypt(Context(home, config))
    run(body)


def _reencrypt(ctx: Context) -> None:
    from node.store.reencrypt import reencrypt_store
    from node.store.sweep import sweep_temp_files

    with ctx.node() as node, progress() as bar:
        sweep_temp_files(node.core.fs)  # what a killed earlier run left
        task = bar.add_task("re-encrypting", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
        report = reencrypt_store(node.core.fs, node.objects, advance)
    out.print(f"re-encrypted {report.rewritten} of {report.listed} objects"
              + (f" ({report.passes} passes: the node wrote meanwhile)" if report.passes > 2
                 else ""))
    if not report.complete:
        err.print(f"{report.unsettled} objects changed while re-encrypting; run "
                  "`support-node keys reencrypt` again", highlight=False)
        raise typer.Exit(1)
