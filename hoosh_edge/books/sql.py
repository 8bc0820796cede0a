"""The stores' SQLite dialect spoken to PostgreSQL: placeholders, rows and inserted ids.

The stores (ledger, rulebook, tally, keys, orphans) write plain SQL with ``?`` or ``:name``
placeholders and read rows by name or position, as ``sqlite3`` gives them. ``PgSession`` accepts
the same calls on a psycopg connection: it rewrites placeholders to psycopg's, ``INSERT OR
IGNORE`` to ``ON CONFLICT DO NOTHING``, and gives ``lastrowid`` by ``RETURNING id``. Integral
``NUMERIC`` results (PostgreSQL's ``SUM`` of a ``BIGINT``) come back as ``int``, as in SQLite.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg

# Tables with a generated ``id`` whose inserts report it (``lastrowid``).
ID_TABLES = frozenset({"ledger", "reservations"})

_INSERT = re.compile(r"^\s*INSERT\s+(OR\s+IGNORE\s+)?INTO\s+(\w+)", re.IGNORECASE)
# A quoted literal, ``IS ?``, a ``?``, a ``:name`` or a ``%``: everything else passes through.
_TOKEN = re.compile(r"'(?:[^']|'')*'|\bIS \?|\?|(?<![:\w]):([A-Za-z_]\w*)|%")


@functools.lru_cache(maxsize=512)
def translate(sql: str, named: bool) -> str:
    """``?`` / ``:name`` to ``%s`` / ``%(name)s``; a literal ``%`` doubled."""

    def swap(m: re.Match[str]) -> str:
        text = m.group(0)
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text == "?":
            return "%s"
        if text == "IS ?":  # SQLite's null-safe comparison
            return "IS NOT DISTINCT FROM %s"
        if text == "%":
            return "%%"
        return f"%({m.group(1)})s" if named else text

    return _TOKEN.sub(swap, sql)


class Row(Sequence[Any]):
    """A result row readable by position or by column name, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = tuple(
            int(v) if isinstance(v, Decimal) and v == v.to_integral_value() else v for v in values
        )

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def keys(self) -> list[str]:
        """Column names, in order."""
        return list(self._names)


class Result:
    """What ``execute`` returns: ``fetchone``, ``fetchall``, iteration, ``rowcount``, ``lastrowid``."""

    def __init__(self, rows: list[Row], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Row]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())

    def close(self) -> None:
        """Nothing to free: the rows were read at once."""


class PgSession:
    """One open transaction on a psycopg connection, spoken to as the stores speak to SQLite."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    @property
    def conn(self) -> PgSession:
        """What ``sqlite_utils.Database.conn`` is to the stores: here, ``executemany``."""
        return self

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each row of parameters."""
        rows = list(rows)
        if rows:
            with self._conn.cursor() as cur:
                cur.executemany(translate(sql, False), rows)  # type: ignore[arg-type]

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Result:
        """Run one statement with SQLite-style placeholders; rows are read at once."""
        named = isinstance(params, dict)
        text = translate(sql, named)
        returning = False
        m = _INSERT.match(text)
        if m:
            if m.group(1):
                text = text[: m.start(1)] + text[m.end(1) :] + " ON CONFLICT DO NOTHING"
            if m.group(2).lower() in ID_TABLES and "RETURNING" not in text.upper():
                text += " RETURNING id"
                returning = True
        cur = self._conn.execute(text, params if params is not None else [])  # type: ignore[arg-type]
        rows: list[Row] = []
        if cur.description is not None:
            names = {col.name: i for i, col in enumerate(cur.description)}
            rows = [Row(names, tuple(r)) for r in cur.fetchall()]
        lastrowid = rows[0][0] if returning and rows else None
        return Result([] if returning else rows, cur.rowcount, lastrowid)

    def raw(self, script: str) -> None:
        """Run a migration's statements (no placeholders) inside the open transaction."""
        self._conn.execute(script.encode())  # bytes: no placeholder parsing, several statements
