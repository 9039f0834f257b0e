"""The async engine gives a request up at once: aborted, or failed, its waiting pairs leave the
queue while the batch in flight finishes for the others; its observer hears of each request."""

import threading

import pytest
from inputs import DOCUMENTS

from qrank import EngineArgs
from qrank.engine.engine import AsyncEngine, Engine


class Events:
    """A RequestObserver that records what it hears."""

    def __init__(self) -> None:
        self.scheduled: list[float] = []
        self.finished: list[float] = []
        self.cancelled: list[tuple[str, int]] = []

    def request_scheduled(self, queue_seconds: float) -> None:
        self.scheduled.append(queue_seconds)

    def request_finished(self, inference_seconds: float) -> None:
        self.finished.append(inference_seconds)

    def request_cancelled(self, reason: str, pairs: int) -> None:
        self.cancelled.append((reason, pairs))


@pytest.fixture(scope="module")
def engine(tiny_model):
    core = Engine(EngineArgs(str(tiny_model), dtype="float32", threads=1,
                             max_num_batched_tokens=64))
    yield core
    core.close()


def held(engine, monkeypatch, failing: set[int]) -> threading.Event:
    """Batches wait for the returned event; those holding a pair of a ``failing`` request
    raise, as a batch the model cannot run would."""
    gate = threading.Event()
    run_batch = engine.run_batch

    def run(batch):
        assert gate.wait(30)
        if any(key[0] in failing for key in batch.keys):
            raise RuntimeError("this request's pairs break the model")
        return run_batch(batch)

    monkeypatch.setattr(engine, "run_batch", run)
    return gate


def start(engine, monkeypatch, failing=frozenset()):
    failing = set(failing)
    gate = held(engine, monkeypatch, failing)
    events = Events()
    async_engine = AsyncEngine(engine, policy="fair")
    async_engine.observer = events
    return async_engine, gate, events, failing


def test_abort_drops_the_waiting_pairs_and_the_others_keep_their_scores(engine, monkeypatch):
    big = engine.encode("a large request", DOCUMENTS * 4)
    small = engine.encode("a small one", DOCUMENTS[:3])
    want = engine.score_tokens(small)
    ae, gate, events, _ = start(engine, monkeypatch)
    try:
        gone = ae.submit(big)
        kept = ae.submit(small)
        dropped = ae.abort(gone, "disconnect")
        assert gone.cancelled()
        assert 0 < dropped <= len(big) and ae.num_pending_requests == 1
        gate.set()
        assert kept.result(30) == pytest.approx(want, abs=1e-5)
        assert ae.abort(kept, "timeout") is None  # done: nothing to give up
        assert events.cancelled == [("disconnect", dropped)]
        assert len(events.finished) == 1 and ae.num_pending_pairs == 0
    finally:
        gate.set()
        ae.shutdown(30)


def test_a_failed_request_leaves_the_queue_and_fails_alone(engine, monkeypatch):
    bad_pairs = engine.encode("a request the model cannot run", DOCUMENTS * 4)
    good_pairs = engine.encode("a good one", DOCUMENTS[:3])
    want = engine.score_tokens(good_pairs)
    ae, gate, events, failing = start(engine, monkeypatch)
    try:
        bad = ae.submit(bad_pairs)
        failing.add(bad.request_id)
        good = ae.submit(good_pairs)
        gate.set()
        with pytest.raises(RuntimeError, match="break the model"):
            bad.result(30)
        assert good.result(30) == pytest.approx(want, abs=1e-5)
        ((reason, dropped),) = events.cancelled
        assert reason == "error" and 0 < dropped < len(bad_pairs)
        assert ae.num_pending_pairs == 0 and ae.num_pending_requests == 0
        assert len(events.scheduled) == 2 and len(events.finished) == 1
    finally:
        gate.set()
        ae.shutdown(30)
