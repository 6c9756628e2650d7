"""Series completion: a series is complete when no instance arrived for a while, or when it
holds as many instances as its header says to expect (Images in Acquisition).

The state is columns of the series row (``last_received_at``, ``complete_at``), so it
survives restarts; a late instance opens the series again. Marking a series complete and
queueing its segmentation job happen in one transaction guarded by ``complete_at IS NULL``,
so however many workers watch, each completion queues exactly one job.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, and_, func, or_, select, update

from node.index import schema as s
from node.index.jobs import enqueue
from node.index.transactions import Transactions

SEGMENT = "segment"
# Series of these modalities hold no images to segment (results, reports, annotations).
NOT_SEGMENTED = ("SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "OT")


def complete_series(catalog: Transactions, now: datetime, quiet_seconds: float,
                    model: str | None) -> list[str]:
    """Marks every open series that is complete by ``now``; with ``model``, queues one
    ``segment`` job per newly complete image series (params: the model id).

    Returns the series UIDs newly marked complete. Raises CatalogError.
    """
    quiet_since = now - timedelta(seconds=quiet_seconds)
    due = select(s.series.c.pk, s.series.c.series_uid, s.series.c.modality).where(
        s.series.c.complete_at.is_(None),
        or_(s.series.c.last_received_at <= quiet_since,
            and_(s.series.c.expected_instances.is_not(None),
                 s.series.c.number_of_instances >= s.series.c.expected_instances)))
    found = catalog.reading(
        "looking for complete series", lambda conn: list(conn.execute(due)))
    done = []
    for pk, series_uid, modality in found:
        def work(conn: Connection, pk: int = pk, uid: str = series_uid,
                 modality: str | None = modality) -> bool:
            marked = conn.execute(update(s.series).where(
                s.series.c.pk == pk, s.series.c.complete_at.is_(None))
                .values(complete_at=now)).rowcount == 1
            if marked and model and (modality or "").upper() not in NOT_SEGMENTED:
                enqueue(conn, [uid], now, model, kind=SEGMENT)
            return marked

        if catalog.transaction(f"completing series {series_uid}", work):
            done.append(series_uid)
    return done


def mark_all_complete(catalog: Transactions, now: datetime) -> int:
    """Marks every series complete without queueing anything (after ``reindex``: the
    series were complete before). Returns how many. Raises CatalogError."""
    return catalog.transaction(
        "marking series complete",
        lambda conn: conn.execute(update(s.series).where(s.series.c.complete_at.is_(None))
                                  .values(complete_at=now)).rowcount)


PRETRAIN = "pretrain"
_COUNTER = "pretrain-images"


def pretrain_due(catalog: Transactions, every: int, params: str, now: datetime) -> bool:
    """Queues one ``pretrain`` job when ``every`` processed, unlabelled images arrived since
    the last one (the count at the last job is kept in the index, moved by compare-and-set,
    so several watchers queue it once). Returns True when it queued one. Raises CatalogError.
    """
    from node.index import versions
    from node.index.records import State

    if every <= 0:
        return False
    count_stmt = select(func.count()).select_from(s.instances).where(
        s.instances.c.state == State.PROCESSED, s.instances.c.labels.is_(None))
    count = int(catalog.reading(
        "counting unlabelled images", lambda conn: conn.scalar(count_stmt) or 0))
    last = versions.current(catalog, _COUNTER)
    if count - last < every:
        return False

    def work(conn: Connection) -> bool:
        if not versions.advance_in(conn, _COUNTER, last, count, now):
            return False  # another watcher queued it
        enqueue(conn, [f"after-{count}-images"], now, params, kind=PRETRAIN)
        return True

    return bool(catalog.transaction("queueing pretraining", work))


def queue_segmentation(index: Transactions, series_uid: str, model: str,
                       sops: list[str] | None = None) -> None:
    """Queues a ``segment`` job for a series (or, with ``sops``, for those images of it) with
    ``model``, as a person asks on the AI page. A job already queued for the series is
    replaced (the newest request wins). Raises CatalogError."""
    params = model if not sops else json.dumps({"model": model, "sops": sops})
    index.transaction(f"queueing segmentation of {series_uid}",
                      lambda conn: enqueue(conn, [series_uid], datetime.now(UTC), params,
                                           kind=SEGMENT))


def segmentation_job(index: Transactions, series_uid: str) -> dict[str, str | None] | None:
    """The segment job of a series while it exists (queued, running or failed), else None
    (never queued, or done). Raises CatalogError."""
    stmt = (select(s.jobs.c.state, s.jobs.c.error, s.jobs.c.params)
            .where(s.jobs.c.kind == SEGMENT, s.jobs.c.target == series_uid))

    def read(conn: Connection) -> dict[str, str | None] | None:
        row = conn.execute(stmt).first()
        return None if row is None else {"state": row[0], "error": row[1], "params": row[2]}

    return index.reading(f"reading the segmentation job of {series_uid}", read)


def segment_params(params: str) -> tuple[str, list[str] | None]:
    """(model id, SOP Instance UIDs or None for the whole series) of a segment job."""
    if params.startswith("{"):
        doc = json.loads(params)
        return str(doc["model"]), [str(u) for u in doc.get("sops") or []] or None
    return params, None
