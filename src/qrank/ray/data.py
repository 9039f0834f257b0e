"""``score-file --ray`` and :func:`score_dataset`: Ray Data ``map_batches`` over an actor pool
of engines. Rows are hash-partitioned on the query side first, so a query's pairs meet in one
block and share their prefix in the engine."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from qrank.config import EngineArgs, engine_args_from_namespace
from qrank.jobs.files import file_format
from qrank.jobs.score_file import Columns, output_table, pair_columns, score_pairs

logger = logging.getLogger(__name__)


class EngineActor:
    """One engine in a Ray Data actor; scores the rows of each batch it is given."""

    def __init__(self, engine_args: dict[str, Any], columns: Columns,
                 instruction: str | None) -> None:
        from qrank.engine.engine import Engine

        self.engine = Engine(EngineArgs(**engine_args))
        self.columns, self.instruction = columns, instruction

    def __call__(self, batch: pa.Table) -> pa.Table:
        queries, documents, instructions = pair_columns(batch, self.columns, self.instruction)
        scores = score_pairs(self.engine, queries, documents, instructions)
        return output_table(batch, np.asarray(scores, dtype=np.float64), self.columns)


def score_dataset(ds: ray.data.Dataset, model: str | None = None, *,
                  engine_args: EngineArgs | None = None, columns: Columns | None = None,
                  instruction: str | None = None, concurrency: int = 1, num_cpus: float = 1.0,
                  num_blocks: int | None = None, **engine_kwargs: Any) -> ray.data.Dataset:
    """``ds`` with a score column, scored by ``concurrency`` engine actors.

    Give the model as ``model`` (and any :class:`EngineArgs` field as a keyword) or as
    ``engine_args``. Each actor reserves ``num_cpus`` CPUs and runs that many torch threads
    unless ``threads`` is given. ``num_blocks`` (default: 4 per actor) is how many blocks the
    rows are hash-partitioned into by query.
    """
    if engine_args is None:
        if model is None:
            raise ValueError("give the model (model=...) or engine_args")
        engine_args = EngineArgs(model=model, **engine_kwargs)
    kwargs = asdict(engine_args)
    if not kwargs.get("threads"):
        kwargs["threads"] = max(1, math.floor(num_cpus))
    kwargs["data_parallel_size"] = 1
    columns = columns or Columns()
    keys = [columns.query]
    if columns.instruction in ds.columns():
        keys.append(columns.instruction)
    ds = ds.repartition(num_blocks or max(1, 4 * concurrency), keys=keys)
    return ds.map_batches(EngineActor, batch_size=None, batch_format="pyarrow",
                          fn_constructor_args=(kwargs, columns, instruction),
                          compute=ray.data.ActorPoolStrategy(size=concurrency),
                          num_cpus=num_cpus)


READERS = {"jsonl": lambda p: ray.data.read_json(p, lines=True),
           "parquet": ray.data.read_parquet, "csv": ray.data.read_csv}


def write_dataset(ds: ray.data.Dataset, path: str, fmt: str) -> None:
    """Ray Data's own writers: ``path`` becomes a folder of files."""
    if fmt == "parquet":
        ds.write_parquet(path)
    elif fmt == "csv":
        ds.write_csv(path)
    else:
        ds.write_json(path)


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join the cluster at ``address`` (``auto``: the running one), or start a local one;
    nothing when this process is connected already. ``log_to_driver``: show the workers'
    logs here."""
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=log_to_driver)


def score_file_command(ns: argparse.Namespace) -> int:
    """``qrank score-file --ray``: read, score and write with Ray Data."""
    from qrank.jobs.options import job_from_namespace

    job = job_from_namespace(ns)
    in_fmt = file_format(job.input, job.input_format)
    out_fmt = file_format(job.output, job.output_format, default=in_fmt)  # a folder: as read
    start = time.perf_counter()
    connect(ns.ray_address)
    ds = READERS[in_fmt](job.input)
    rows = ds.count()
    scored = score_dataset(ds, engine_args=engine_args_from_namespace(ns),
                           columns=job.columns, instruction=job.instruction,
                           concurrency=ns.concurrency, num_cpus=ns.num_cpus_per_actor)
    write_dataset(scored, job.output, out_fmt)
    summary = {"rows": rows, "seconds": time.perf_counter() - start,
               "output": job.output}
    logger.info("scored %d rows on Ray in %.1f s into %s/", summary["rows"],
                summary["seconds"], job.output)
    print(json.dumps(summary))
    return 0
