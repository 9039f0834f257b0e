"""The keys and values of long pairs between their pieces (chunked prefill).

A long pair is computed in pieces (:class:`qrank.engine.scheduler.Piece`), each over the keys and
values of those before it. They are held here by work item from one piece to the next, and
dropped when its last piece has run or when its request is given up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qrank.engine.prefix_cache import kv_nbytes
from qrank.engine.scheduler import WorkItem
from qrank.models.qwen3 import PrefixKV


class PieceKV:
    """Keys and values of the long pairs under way, by work item (its identity)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[WorkItem, PrefixKV, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # the server's metrics read the size from other threads

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, item: WorkItem) -> PrefixKV | None:
        entry = self._entries.get(id(item))
        return None if entry is None else entry[1]

    def put(self, item: WorkItem, kv: PrefixKV) -> None:
        """Hold ``kv``, the keys and values of ``item``'s tokens so far (replacing those
        held for its pieces before)."""
        size = kv_nbytes(kv)
        with self._lock:
            old = self._entries.get(id(item))
            self._bytes += size - (old[2] if old is not None else 0)
            self._entries[id(item)] = (item, kv, size)

    def drop(self, item: WorkItem) -> None:
        self.drop_where(lambda it: it is item)

    def drop_where(self, gone: Callable[[WorkItem], bool]) -> int:
        """Drop the entries of the items for which ``gone`` is true; returns how many."""
        with self._lock:
            ids = [i for i, (item, _, _) in self._entries.items() if gone(item)]
            for i in ids:
                self._bytes -= self._entries.pop(i)[2]
        return len(ids)
