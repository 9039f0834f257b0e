"""Data-parallel scoring: engine copies in worker processes, each with its own threads.

On a CPU with few cores, N single-thread engines scoring separate batches beat one engine with
N threads (``benchmarks/data_parallel_ab.py``: 1.22-1.25x on two cores): no OpenMP barrier
between a layer's many short kernels, and a stalled core slows one worker, not both. Each worker
holds its own copy of the model, so memory grows with N.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from qrank.config import EngineArgs
from qrank.engine.engine import Engine
from qrank.tokenize import PairTokens


def create_engine(args: EngineArgs) -> Engine:
    """An engine for ``args``; with ``data_parallel_size`` > 1, its offline jobs are split
    over it and ``data_parallel_size - 1`` copies of it in worker processes."""
    engine = Engine(args)
    if args.data_parallel_size > 1:
        engine.parallel = DataParallelScorer(engine, args.data_parallel_size - 1)
    return engine


class DataParallelScorer:
    """Scores a job's pairs over ``engine`` and ``count`` worker copies of it: the pairs are
    split by query into one share per copy, and this process scores the first share while
    the workers score the others."""

    def __init__(self, engine: Engine, count: int) -> None:
        self.engine = engine
        args = replace(engine.args, data_parallel_size=1,
                       threads=engine.args.threads_per_engine(), score_cache_entries=0)
        self.workers = DataParallelWorkers(args, count)

    def __call__(self, pairs: list[PairTokens], use_tqdm: bool | None) -> list[float]:
        """The pairs' logits, in their order."""
        shares = split_by_query(pairs, len(self.workers) + 1)
        self.workers.send([[pairs[i] for i in share] for share in shares[1:]])
        try:
            here = self.engine.score_here([pairs[i] for i in shares[0]], use_tqdm)
        finally:
            there = self.workers.receive()
        scores = [0.0] * len(pairs)
        for share, share_scores in zip(shares, [here, *there], strict=True):
            for i, s in zip(share, share_scores, strict=True):
                scores[i] = s
        return scores

    def close(self) -> None:
        self.workers.close()


def split_by_query(pairs: Sequence[PairTokens], parts: int) -> list[list[int]]:
    """Indices of ``pairs`` cut into ``parts`` shares of about equal tokens, query by query.

    The pairs are lined up with those of one query side next to each other, and the line is
    cut into ``parts`` runs of equal tokens (each pair goes to the run its middle token falls
    in). A query's pairs stay together unless a cut falls inside them: then each of the
    (at most ``parts - 1``) cut queries has its prefix computed once per share, while a
    one-query job, as vLLM's random-rerank sends, still spreads over every engine copy.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.shared, []).append(i)
    total = sum(len(p) for p in pairs)
    shares: list[list[int]] = [[] for _ in range(parts)]
    done = 0
    for members in groups.values():
        for i in members:
            middle = done + len(pairs[i]) / 2
            shares[min(parts - 1, int(middle * parts / total))].append(i)
            done += len(pairs[i])
    return shares


def _serve(conn: Connection, args: EngineArgs) -> None:
    """A worker process: load an engine, then score the shares it is sent until ``None``
    (their logits: the caller applies the sigmoid, as for its own share)."""
    try:
        engine = Engine(args)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while (pairs := conn.recv()) is not None:
        try:
            conn.send(("ok", engine.score_tokens(pairs, use_tqdm=False, use_activation=False)))
        except Exception as exc:  # noqa: BLE001 - a failed share fails the caller's job
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class DataParallelWorkers:
    """``count`` engine processes that score shares of a job beside the caller's own engine."""

    def __init__(self, args: EngineArgs, count: int) -> None:
        ctx = mp.get_context("spawn")  # forking a process that has run OpenMP is not safe
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, args), daemon=True,
                               name="qrank-dp-worker")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            self.receive()  # every worker's "ready", or the first failure
        except RuntimeError:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._conns)

    def send(self, shares: list[list[PairTokens]]) -> None:
        """Start worker i on ``shares[i]``."""
        for conn, share in zip(self._conns, shares, strict=True):
            conn.send(share)

    def receive(self) -> list[Any]:
        """Each worker's answer to the last message (the scores of its share), in worker
        order. Every answer is read before a failure is raised, so the next job starts in
        step."""
        replies = [self._recv(conn) for conn in self._conns]
        for kind, value in replies:
            if kind == "error":
                raise RuntimeError(f"a data-parallel worker failed: {value}")
        return [value for _, value in replies]

    @staticmethod
    def _recv(conn: Connection) -> tuple[str, Any]:
        try:
            return conn.recv()
        except EOFError:
            return "error", ("its process died (a script that starts data-parallel workers "
                             "must guard its main code with `if __name__ == '__main__':`)")

    def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a worker that died already
                conn.send(None)
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
        self._conns, self._procs = [], []

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for a caller that sums their memory)."""
        return [p.pid for p in self._procs]

    @property
    def alive(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)
