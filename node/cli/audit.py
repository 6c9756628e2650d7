"""``support-node audit``: the audit trail, latest first (node.index.audit)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from node.cli.common import ConfigOpt, Context, HomeOpt, app, out, print_table, run
from node.errors import ConfigError
from node.index import audit as trail


@app.command()
def audit(action: Annotated[str | None, typer.Option(
              help="Only this action: store, query, retrieve, export or delete.")] = None,
          since: Annotated[str | None, typer.Option(
              help="Only entries from this time on (ISO 8601, e.g. 2026-11-29 or "
                   "2026-11-29T14:00; UTC unless it says otherwise).")] = None,
          limit: Annotated[int, typer.Option(help="At most this many entries.")] = 50,
          as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")]
          = False,
          home: HomeOpt = None, config: ConfigOpt = None) -> None:
    """Who stored, queried, retrieved, exported or deleted what: caller, protocol, hospital,
    UIDs and outcome, latest first (never a patient's name or ID)."""
    def body() -> None:
        if action is not None and action not in trail.ACTIONS:
            raise ConfigError(f"--action: one of {', '.join(trail.ACTIONS)}")
        start = None
        if since is not None:
            try:
                start = datetime.fromisoformat(since)
            except ValueError:
                raise ConfigError(f"--since: not an ISO 8601 time: {since!r}") from None
            if start.tzinfo is None:
                start = start.replace(tzinfo=UTC)
        with Context(home, config).node() as node:
            rows = trail.entries(node.core.catalog, action, start, max(1, limit))
        if as_json:
            for row in rows:
                out.print(json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v)
                                      for k, v in row.items()}), highlight=False)
            return
        table = Table("at (UTC)", "action", "via", "caller", "hospital", "outcome", "what")
        for row in rows:
            what = " ".join(str(u) for u in (row["study_uid"], row["series_uid"],
                                             row["sop_uid"]) if u)
            detail = row["detail"] or ""
            table.add_row(f"{row['at']:%Y-%m-%d %H:%M:%S}", row["action"], row["protocol"],
                          row["caller"] or "-", row["hospital"] or "(every)", row["outcome"],
                          " ".join(p for p in (what, detail) if p))
        print_table(table)
    run(body)
