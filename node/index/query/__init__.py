"""The query engine of the index: plain keys and values in, plain rows out.

One engine serves C-FIND, C-MOVE and C-GET (through the DIMSE edge's identifier parsing),
QIDO-RS (through the web edge) and ``ls --patient-name``:

* :mod:`.model` — what a query is (:class:`Query`: a level, conditions, the keywords to
  return, a hospital scope), built by :func:`build` from ``(keyword or tag, values)`` pairs,
  hierarchical (PS3.4 C.4.1.2.1, in a :class:`Model`) or relational (QIDO-RS);
* :mod:`.sql` — the SQLAlchemy SELECT of a query;
* :mod:`.execute` — runs it, streaming one ``{keyword: value}`` mapping per match, or the
  instances below the matches (what a retrieve sends).

Errors (all :class:`QueryError`, a :class:`~node.errors.NodeError`)::

    QueryError
    ├── QueryLevelError     the level, or a unique key above it, does not fit the model
    └── QueryValueError     a malformed value, a wildcard where none is allowed, sequence
                            matching

Each edge maps them once (DIMSE: 0xA900 / 0xC000; HTTP: 400).
"""

from node.index.attributes import Level
from node.index.query.execute import InstanceRef, count_instances, instances_for, run
from node.index.query.model import (
    SUPPORTED_KEYWORDS,
    Condition,
    MatchKind,
    Model,
    Query,
    QueryError,
    QueryLevelError,
    QueryValueError,
    build,
    unique_keywords,
)

__all__ = [
    "SUPPORTED_KEYWORDS",
    "Condition",
    "InstanceRef",
    "Level",
    "MatchKind",
    "Model",
    "Query",
    "QueryError",
    "QueryLevelError",
    "QueryValueError",
    "build",
    "count_instances",
    "instances_for",
    "run",
    "unique_keywords",
]
