"""An LRU cache of query-prefix keys and values, bounded in bytes.

An entry is keyed by its prefix's token ids, or by ``(cache_salt, ids)`` for a request with a
salt (:func:`qrank.engine.scheduler.prefix_key`), so that different salts never share one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from qrank.models.qwen3 import PrefixKV


def kv_nbytes(kv: PrefixKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


class PrefixCache:
    """Least-recently-used prefix K/V; ``capacity_bytes`` 0 turns it off."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(0, int(capacity_bytes))
        self._entries: OrderedDict[Hashable, tuple[PrefixKV, int]] = OrderedDict()
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

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is cached, without counting a hit or refreshing it."""
        return key in self._entries

    def get(self, key: Hashable) -> PrefixKV | None:
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, kv: PrefixKV) -> bool:
        """Keep ``kv`` under ``key``; False when it alone exceeds the capacity."""
        size = kv_nbytes(kv)
        if not self.enabled or size > self.capacity:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (kv, size)
            self._bytes += size
            while self._bytes > self.capacity:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
