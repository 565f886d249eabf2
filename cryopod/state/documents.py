"""Tables of domain objects stored whole as JSON, with a few columns for lookups.

Sandboxes and containers are written as documents (see `codec`); the columns beside the
document hold what queries filter on and what must be unique. A name clash is reported as
ALREADY_EXISTS naming the holder, the way the kubelet expects after a retried create.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from cryopod.errors import AlreadyExists
from cryopod.state import codec
from cryopod.state.db import Database

T = TypeVar("T")


class DocumentTable(Generic[T]):
    """One table: `id`, `name` (unique), lookup columns, and the object's JSON."""

    def __init__(
        self,
        db: Database,
        *,
        table: str,
        kind: str,
        cls: type[T],
        columns: Callable[[T], Mapping[str, Any]],
    ) -> None:
        self._db = db
        self._table = table
        self._kind = kind
        self._cls = cls
        self._columns = columns
        self._being_created: set[str] = set()
        # Decoded objects by id. The daemon is the only writer and the objects are frozen,
        # so a listing (every second, from the kubelet) decodes only what changed.
        self._decoded: dict[str, T] = {}

    def add(self, item: T) -> None:
        """Insert a new object; raises AlreadyExists when its name is taken."""
        row = {**self._columns(item), "document": codec.dumps(item)}
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        try:
            self._db.execute(
                f"INSERT INTO {self._table} ({names}) VALUES ({marks})", list(row.values())
            )
        except sqlite3.IntegrityError as exc:
            holder = self._holder_of(row["name"])
            if holder is None:
                raise
            raise self._name_taken(row["name"], holder) from exc
        self._decoded[row["id"]] = item

    def update(self, item: T) -> None:
        row = {**self._columns(item), "document": codec.dumps(item)}
        assignments = ", ".join(f"{column} = ?" for column in row if column != "id")
        values = [v for k, v in row.items() if k != "id"]
        changed = self._db.execute(
            f"UPDATE {self._table} SET {assignments} WHERE id = ?", [*values, row["id"]]
        )
        # An update racing a delete must not bring the object back through the cache.
        if changed:
            self._decoded[row["id"]] = item
        else:
            self._decoded.pop(row["id"], None)

    @contextlib.contextmanager
    def reserving(self, name: str) -> Iterator[None]:
        """Hold `name` while an object is being created (its row is written at the end).

        Raises AlreadyExists when a recorded object or a creation in flight has the name.
        """
        holder = self._holder_of(name)
        if holder is not None:
            raise self._name_taken(name, holder)
        if name in self._being_created:
            raise AlreadyExists(f"{self._kind} name {name!r} is being created right now")
        self._being_created.add(name)
        try:
            yield
        finally:
            self._being_created.discard(name)

    def _holder_of(self, name: str) -> str | None:
        row = self._db.query_one(f"SELECT id FROM {self._table} WHERE name = ?", (name,))
        return str(row["id"]) if row else None

    def _name_taken(self, name: str, holder: str) -> AlreadyExists:
        return AlreadyExists(f"{self._kind} name {name!r} is already reserved for {holder}")

    def find(self, id_or_prefix: str) -> T | None:
        """The object with this id, or with this unique id prefix."""
        item = self.get(id_or_prefix)
        if item is None:
            matches = self.ids_with_prefix(id_or_prefix)
            item = self.get(matches[0]) if len(matches) == 1 else None
        return item

    def get(self, item_id: str) -> T | None:
        cached = self._decoded.get(item_id)
        if cached is not None:
            return cached
        row = self._db.query_one(f"SELECT id, document FROM {self._table} WHERE id = ?", (item_id,))
        return self._decode(row) if row else None

    def _decode(self, row: sqlite3.Row) -> T:
        item_id = str(row["id"])
        item = self._decoded.get(item_id)
        if item is None:
            item = self._decoded[item_id] = codec.loads(self._cls, row["document"])
        return item

    def ids_with_prefix(self, prefix: str) -> list[str]:
        rows = self._db.query(
            f"SELECT id FROM {self._table} WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
        )
        return [str(r["id"]) for r in rows]

    def select(self, where: str = "", params: tuple[Any, ...] = ()) -> list[T]:
        """Objects matching an SQL condition on the lookup columns, oldest first."""
        condition = f" WHERE {where}" if where else ""
        rows = self._db.query(
            f"SELECT id, document FROM {self._table}{condition} ORDER BY created_ns", params
        )
        return [self._decode(r) for r in rows]

    def delete(self, item_id: str) -> None:
        self._db.execute(f"DELETE FROM {self._table} WHERE id = ?", (item_id,))
        self._decoded.pop(item_id, None)
