"""``qrank score-file``: score every (query, document) row of a file and write it back with its
score, in parts that a restarted job does not score again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from qrank.jobs.files import file_format, read_table, write_table
from qrank.jobs.parts import PartStore
from qrank.tokenize import PairTokens

logger = logging.getLogger(__name__)


class PairScorer(Protocol):
    """What a job needs of an engine (:class:`qrank.engine.engine.Engine` has it)."""

    def encode_pairs(self, queries: list[str], documents: list[str],
                     instruction: str | None = None) -> list[PairTokens]: ...

    def score_tokens(self, pairs: list[PairTokens], use_tqdm: bool | None = None
                     ) -> list[float]: ...


@dataclass
class Columns:
    """Names of the input's columns, and of the score column written."""

    query: str = "query"
    document: str = "document"
    instruction: str = "instruction"
    id: str | None = None
    score: str = "score"


@dataclass
class ScoreFileJob:
    """One file to score. ``part_size`` rows make one resumable part."""

    input: str
    output: str
    columns: Columns = field(default_factory=Columns)
    input_format: str | None = None
    output_format: str | None = None
    instruction: str | None = None
    part_size: int = 10_000
    overwrite: bool = False
    progress: bool = True


@dataclass
class JobSummary:
    rows: int
    parts: int
    parts_skipped: int
    rows_scored: int
    seconds: float
    output: str


def score_pairs(engine: PairScorer, queries: Sequence[str], documents: Sequence[str],
                instructions: Sequence[str | None]) -> list[float]:
    """Scores of pairs given column by column; rows under one instruction are encoded together,
    so each query is rendered once and its pairs share their prefix in the engine."""
    by_instruction: dict[str | None, list[int]] = {}
    for i, ins in enumerate(instructions):
        by_instruction.setdefault(ins, []).append(i)
    scores = [0.0] * len(queries)
    for ins, idx in by_instruction.items():
        toks = engine.encode_pairs([queries[i] for i in idx], [documents[i] for i in idx], ins)
        for i, s in zip(idx, engine.score_tokens(toks, use_tqdm=False), strict=True):
            scores[i] = s
    return scores


def pair_columns(table: pa.Table, columns: Columns, default_instruction: str | None = None
                 ) -> tuple[list[str], list[str], list[str | None]]:
    """The query, document and instruction of every row; a clear error for what is missing."""
    missing = [c for c in (columns.query, columns.document) if c not in table.column_names]
    if columns.id is not None and columns.id not in table.column_names:
        missing.append(columns.id)
    if missing:
        raise ValueError(f"the input has no column {', '.join(map(repr, missing))} (it has "
                         f"{', '.join(table.column_names) or 'none'}): name the columns with "
                         "--query-column, --document-column, --id-column")
    queries = _texts(table, columns.query)
    documents = _texts(table, columns.document)
    if columns.instruction in table.column_names:
        instructions = [default_instruction if v is None else str(v)
                        for v in table.column(columns.instruction).to_pylist()]
    else:
        instructions = [default_instruction] * table.num_rows
    return queries, documents, instructions


def _texts(table: pa.Table, name: str) -> list[str]:
    values = table.column(name).to_pylist()
    for i, v in enumerate(values):
        if v is None:
            raise ValueError(f"row {i} has no {name!r}")
    return [str(v) for v in values]


def plan_parts(queries: Sequence[str], instructions: Sequence[str | None],
               part_size: int) -> list[np.ndarray]:
    """Row numbers of each part: rows lined up query by query (first appearance order), cut
    every ``part_size`` rows. A query's rows stay together except where a cut falls in them."""
    if part_size < 1:
        raise ValueError("part_size must be positive")
    groups: dict[tuple[str | None, str], list[int]] = {}
    for i, key in enumerate(zip(instructions, queries, strict=True)):
        groups.setdefault(key, []).append(i)
    order = np.fromiter((i for rows in groups.values() for i in rows), dtype=np.int64,
                        count=len(queries))
    return [order[s : s + part_size] for s in range(0, len(order), part_size)]


def manifest(job: ScoreFileJob, engine_key: dict[str, Any]) -> dict[str, Any]:
    """What identifies a job's parts: input file, columns, part size and engine."""
    stat = Path(job.input).stat()
    return {"input": str(Path(job.input).resolve()), "input_size": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns, "columns": asdict(job.columns),
            "instruction": job.instruction, "part_size": job.part_size, "engine": engine_key}


def output_table(table: pa.Table, scores: np.ndarray, columns: Columns) -> pa.Table:
    """With an id column: id and score; else every input column and the score."""
    score = pa.array(scores, pa.float64())
    if columns.id is not None:
        return pa.table({columns.id: table.column(columns.id), columns.score: score})
    if columns.score in table.column_names:
        raise ValueError(f"the input already has a column {columns.score!r}: name the score "
                         "column with --score-column")
    return table.append_column(columns.score, score)


def run_score_file(job: ScoreFileJob, make_engine: Callable[[], PairScorer],
                   engine_key: dict[str, Any]) -> JobSummary:
    """Score ``job.input`` into ``job.output``, skipping parts a killed run finished.
    ``make_engine`` is called only when some part is left to score."""
    start = time.perf_counter()
    output = Path(job.output)
    out_fmt = file_format(output, job.output_format)
    text_columns = (job.columns.query, job.columns.document, job.columns.instruction)
    table = read_table(job.input, job.input_format, text_columns)
    queries, documents, instructions = pair_columns(table, job.columns, job.instruction)
    if job.columns.id is None and job.columns.score in table.column_names:
        output_table(table.slice(0, 0), np.zeros(0), job.columns)  # raises the clear error
    store = PartStore(output, manifest(job, engine_key))
    if output.exists() and not job.overwrite and not store.dir.exists():
        raise ValueError(f"{output} exists: remove it or pass --overwrite")
    store.open()
    parts = plan_parts(queries, instructions, job.part_size)
    done = store.done()
    todo = [i for i in range(len(parts)) if i not in done]
    if done:
        logger.info("resuming: %d of %d parts are done, %d left", len(done), len(parts),
                    len(todo))
    scored = 0
    if todo:
        engine = make_engine()
        initial = sum(len(parts[i]) for i in done if i < len(parts))
        with tqdm(total=table.num_rows, initial=initial, unit="pair", desc="score-file",
                  disable=not job.progress) as bar:
            for index in todo:
                rows = parts[index]
                scores = score_pairs(engine, [queries[i] for i in rows],
                                     [documents[i] for i in rows],
                                     [instructions[i] for i in rows])
                store.write(index, rows, scores)
                scored += len(rows)
                bar.update(len(rows))
    scores = store.assemble(table.num_rows)
    write_table(output_table(table, scores, job.columns), output, out_fmt)
    store.remove()
    return JobSummary(table.num_rows, len(parts), len(parts) - len(todo), scored,
                      time.perf_counter() - start, str(output))


def engine_key(args: Any) -> dict[str, Any]:
    """The EngineArgs fields that change scores: a job resumes only under the same ones."""
    names = ("model", "tokenizer", "revision", "dtype", "max_model_len", "hf_overrides",
             "quantization", "device")
    return {n: getattr(args, n) for n in names}
