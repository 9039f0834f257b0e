"""Flags of ``qrank score-file`` beyond the engine's."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the job module imports pyarrow: not needed to build the parser
    from qrank.jobs.score_file import ScoreFileJob


def add_score_file_arguments(parser: argparse.ArgumentParser,
                             common: argparse._ArgumentGroup) -> None:
    """Add the job's flags; the input, output and model go to ``common``."""
    common.add_argument("input", metavar="INPUT", help="a .jsonl, .parquet or .csv file")
    common.add_argument("--output", "-o", required=True,
                        help="file to write (format from its extension)")
    common.add_argument("--model", required=True, help="local directory or Hugging Face Hub id")
    g = parser.add_argument_group("job")
    g.add_argument("--query-column", default="query", help="column holding the query")
    g.add_argument("--document-column", default="document", help="column holding the document")
    g.add_argument("--instruction-column", default="instruction",
                   help="column holding each row's instruction, used where the input has it")
    g.add_argument("--id-column", default=None,
                   help="write only this column and the score (default: every input column "
                        "and the score)")
    g.add_argument("--score-column", default="score", help="name of the score column written")
    g.add_argument("--instruction", default=None,
                   help="instruction of rows without one (default: the model card's)")
    g.add_argument("--input-format", choices=["jsonl", "parquet", "csv"], default=None,
                   help="format of INPUT (default: from its extension)")
    g.add_argument("--output-format", choices=["jsonl", "parquet", "csv"], default=None,
                   help="format of --output (default: from its extension; with --ray, "
                        "an --output folder without one takes the input's)")
    g.add_argument("--part-size", type=int, default=10_000,
                   help="rows per resumable part; a killed job restarted with the same "
                        "--output skips the finished parts")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar")
    g.add_argument("--data-parallel-size", "--data_parallel_size", type=int, default=1,
                   help="engine copies in this process and its workers, one per core share")
    r = parser.add_argument_group("ray (pip install 'qrank[ray]')")
    r.add_argument("--ray", action="store_true",
                   help="run the job as Ray Data map_batches over an actor pool of engines")
    r.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto: the running one; default: start a local one)")
    r.add_argument("--concurrency", type=int, default=1, help="engine actors on Ray")
    r.add_argument("--num-cpus-per-actor", type=float, default=1.0,
                   help="CPUs Ray reserves for each engine actor (its torch threads)")


def job_from_namespace(ns: argparse.Namespace) -> ScoreFileJob:
    from qrank.jobs.score_file import Columns, ScoreFileJob

    columns = Columns(query=ns.query_column, document=ns.document_column,
                      instruction=ns.instruction_column, id=ns.id_column,
                      score=ns.score_column)
    return ScoreFileJob(input=ns.input, output=ns.output, columns=columns,
                        input_format=ns.input_format, output_format=ns.output_format,
                        instruction=ns.instruction, part_size=ns.part_size,
                        overwrite=ns.overwrite, progress=ns.progress)
