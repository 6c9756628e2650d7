"""The admin CLI: ``support-node COMMAND``, a package of small command modules.

``common`` builds the app, the context object and the error table; each other module
registers its commands on the app: ``data`` (init, serve, import, verify, ...), ``keys``
(list, rotate, reencrypt), ``browse`` (ls, get), ``audit`` (the audit trail), ``models``
(library, pretrain, train, evaluate, segment), ``demo`` (labelled phantoms), ``tokens``
(web API tokens).
"""

from __future__ import annotations

import sys


def _command(argv: list[str]) -> str | None:
    """The command named on the line, after any ``--home DIR`` / ``--config FILE``."""
    args = iter(argv)
    for arg in args:
        if arg in ("--home", "--config"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


if _command(sys.argv[1:]) == "serve":
    # Before anything imports prometheus_client: every process of the node adds its metrics
    # to one folder, so /metrics shows the receivers' and workers' too.
    from node.metrics_folder import use_folder

    use_folder()

# After the metrics folder is chosen (above), hence not at the top.
from node.cli import audit, browse, data, demo, keys, models, tokens  # noqa: E402, F401  (they register commands)
from node.cli.common import app  # noqa: E402
from node.store.modes import restrict_umask  # noqa: E402


def main() -> None:
    # Every file and folder this process (and the processes it starts) creates is its
    # owner's only: the index holds patient names, exports hold images (node.store.modes).
    restrict_umask()
    app()


__all__ = ["app", "main"]
