"""The admin CLI: ``support-node COMMAND``, a package of small command modules.

``common`` builds the app, the context object and the error table; each other module
registers its commands on the app: ``data`` (init, serve, import, ls, get, ...), ``models``
(library, pretrain, train, evaluate, segment), ``tokens`` (web API tokens).
"""

from __future__ import annotations

import sys

if len(sys.argv) > 1 and sys.argv[1] == "serve":
    # Before anything imports prometheus_client: every process of the node adds its metrics
    # to one folder, so /metrics shows the receivers' and workers' too.
    from node.metrics_folder import use_folder

    use_folder()

from node.cli import data, models, tokens  # noqa: F401  (they register their commands)
from node.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
