"""A bounded least-recently-used cache of scores, keyed by a pair's exact token ids.

The engines keep each pair's logit here (the score before its sigmoid), so a cached answer
serves requests for the score and for the logit alike.

Search traffic repeats (popular queries, retries, the next page of a result list); a pair whose
token ids, model, dtype and ``cache_salt`` were scored before is answered from here without
entering the engine. The key is a 128-bit BLAKE2b digest of those, never the text, so a score is
only ever returned for the same token ids (a false hit needs a 128-bit collision).

The table is flat arrays, not a dict: open addressing with linear probing and backward-shift
deletion, and a doubly linked list through the slots for the LRU order. Each slot costs 32
bytes (two key words, the score, two links) at a load of at most 3/4, so a million entries
take 64 MiB where a Python dict of them would take several times that.
"""

from __future__ import annotations

import hashlib
import threading
from array import array

from qrank.tokenize import PairTokens

SLOT_BYTES = 32
EMPTY = 0  # a key's high word is never 0 (its low bit is set), so 0 marks an empty slot


def _words(n: int, typecode: str) -> array:
    return array(typecode, bytes(n * array(typecode).itemsize))


class ScoreCache:
    """Scores of recently seen pairs, at most ``entries`` of them; 0 turns the cache off.

    ``namespace`` names what else a score depends on (the model and its dtype): caches of
    different namespaces never share keys. Safe to use from several threads.
    """

    def __init__(self, entries: int, namespace: str = "") -> None:
        self.capacity = max(0, int(entries))
        self._secret = hashlib.blake2b(namespace.encode(), digest_size=32).digest()
        size = 1
        while size * 3 < self.capacity * 4:  # load factor at most 3/4
            size *= 2
        size = max(size, 2) if self.capacity else 0
        self._mask = size - 1
        self._hi = _words(size, "Q")
        self._lo = _words(size, "Q")
        self._score = _words(size, "d")
        self._prev = array("i", [-1]) * size
        self._next = array("i", [-1]) * size
        self._newest = -1
        self._oldest = -1
        self._count = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def nbytes(self) -> int:
        """Memory held by the table (allocated once, whatever it holds)."""
        return (self._mask + 1) * SLOT_BYTES

    def __len__(self) -> int:
        return self._count

    def key(self, pair: PairTokens) -> tuple[int, int]:
        """The pair's 128-bit key: its token ids, its salt and this cache's namespace."""
        digest = hashlib.blake2b(digest_size=16, key=self._secret)
        digest.update(pair.salt.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
        digest.update(array("i", pair.shared).tobytes())
        digest.update(array("i", pair.own).tobytes())
        raw = digest.digest()
        return int.from_bytes(raw[:8], "little") | 1, int.from_bytes(raw[8:], "little")

    def lookup(self, pairs: list[PairTokens]) -> tuple[list[tuple[int, int]], list[float | None]]:
        """Each pair's key and its cached score (``None``: a miss), counted as :meth:`get`."""
        keys = [self.key(p) for p in pairs]
        return keys, [self.get(k) for k in keys]

    def get(self, key: tuple[int, int]) -> float | None:
        """The score cached under ``key`` (now the most recent), or ``None``; counted."""
        if not self.capacity:
            return None
        with self._lock:
            slot = self._find(key)
            if slot < 0:
                self.misses += 1
                return None
            self.hits += 1
            self._unlink(slot)
            self._push_newest(slot)
            return self._score[slot]

    def put(self, key: tuple[int, int], score: float) -> None:
        """Cache ``score`` under ``key``, evicting the least recently used entry when full."""
        if not self.capacity:
            return
        with self._lock:
            slot = self._find(key)
            if slot >= 0:
                self._score[slot] = score
                self._unlink(slot)
                self._push_newest(slot)
                return
            if self._count >= self.capacity:
                self._delete(self._oldest)
            hi, lo = key
            slot = hi & self._mask
            while self._hi[slot] != EMPTY:
                slot = (slot + 1) & self._mask
            self._hi[slot], self._lo[slot], self._score[slot] = hi, lo, score
            self._push_newest(slot)
            self._count += 1

    def clear(self) -> None:
        with self._lock:
            for arr in (self._hi, self._lo):
                arr[:] = _words(len(arr), "Q")
            self._prev[:] = array("i", [-1]) * len(self._prev)
            self._next[:] = array("i", [-1]) * len(self._next)
            self._newest = self._oldest = -1
            self._count = 0

    def keys_newest_first(self) -> list[tuple[int, int]]:
        """Every key, most recently used first (for tests and inspection)."""
        with self._lock:
            out, slot = [], self._newest
            while slot >= 0:
                out.append((self._hi[slot], self._lo[slot]))
                slot = self._next[slot]
            return out

    # ---- the table -----------------------------------------------------------------------
    def _find(self, key: tuple[int, int]) -> int:
        hi, lo = key
        slot = hi & self._mask
        while True:
            found = self._hi[slot]
            if found == EMPTY:
                return -1
            if found == hi and self._lo[slot] == lo:
                return slot
            slot = (slot + 1) & self._mask

    def _delete(self, slot: int) -> None:
        """Remove the entry at ``slot``; entries after it in its probe run shift back so that
        every lookup still finds its key without tombstones."""
        self._unlink(slot)
        self._count -= 1
        hole, mask = slot, self._mask
        probe = hole
        while True:
            probe = (probe + 1) & mask
            hi = self._hi[probe]
            if hi == EMPTY:
                break
            home = hi & mask
            # the entry at probe may move into the hole unless its home lies in (hole, probe]
            if (hole < probe and hole < home <= probe) or (
                    hole > probe and (home > hole or home <= probe)):
                continue
            self._move(probe, hole)
            hole = probe
        self._hi[hole] = EMPTY
        self._lo[hole] = 0

    def _move(self, src: int, dst: int) -> None:
        self._hi[dst], self._lo[dst], self._score[dst] = self._hi[src], self._lo[src], \
            self._score[src]
        before, after = self._prev[src], self._next[src]
        self._prev[dst], self._next[dst] = before, after
        if before >= 0:
            self._next[before] = dst
        else:
            self._newest = dst
        if after >= 0:
            self._prev[after] = dst
        else:
            self._oldest = dst

    def _unlink(self, slot: int) -> None:
        before, after = self._prev[slot], self._next[slot]
        if before >= 0:
            self._next[before] = after
        else:
            self._newest = after
        if after >= 0:
            self._prev[after] = before
        else:
            self._oldest = before
        self._prev[slot] = self._next[slot] = -1

    def _push_newest(self, slot: int) -> None:
        self._prev[slot] = -1
        self._next[slot] = self._newest
        if self._newest >= 0:
            self._prev[self._newest] = slot
        self._newest = slot
        if self._oldest < 0:
            self._oldest = slot
