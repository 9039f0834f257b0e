"""``qrank score-file`` in this process: flags to a job, the job run, a summary printed."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from qrank.config import engine_args_from_namespace
from qrank.jobs.options import job_from_namespace
from qrank.jobs.score_file import engine_key, run_score_file

logger = logging.getLogger(__name__)


def main(ns: argparse.Namespace) -> int:
    from qrank.engine.data_parallel import create_engine

    job = job_from_namespace(ns)
    args = engine_args_from_namespace(ns)
    engines = []

    def make_engine():
        engines.append(create_engine(args))
        return engines[-1]

    try:
        summary = run_score_file(job, make_engine, engine_key(args))
    finally:
        for engine in engines:
            engine.close()
    logger.info("scored %d rows (%d parts, %d done before) in %.1f s into %s", summary.rows,
                summary.parts, summary.parts_skipped, summary.seconds, summary.output)
    print(json.dumps(asdict(summary)))
    return 0
