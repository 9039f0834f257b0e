"""An LRU cache of query-prefix keys and values, keyed by token ids and bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict

from qrank.models.qwen3 import PrefixKV


def kv_nbytes(kv: PrefixKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    """Least-recently-used prefix K/V; ``capacity_bytes`` 0 turns it off."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(0, int(capacity_bytes))
        self._entries: OrderedDict[tuple[int, ...], tuple[PrefixKV, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, ids: object) -> bool:
        """Whether ``ids`` is cached, without counting a hit or refreshing it."""
        return ids in self._entries

    def get(self, ids: tuple[int, ...]) -> PrefixKV | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(ids)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(ids)
            self.hits += 1
            return entry[0]

    def put(self, ids: tuple[int, ...], kv: PrefixKV) -> bool:
        """Keep ``kv`` for ``ids``; False when it alone exceeds the capacity."""
        size = kv_nbytes(kv)
        if not self.enabled or size > self.capacity:
            return False
        with self._lock:
            old = self._entries.pop(ids, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[ids] = (kv, size)
            self._bytes += size
            while self._bytes > self.capacity:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
