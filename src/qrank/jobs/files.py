"""Tables in and out of files: JSONL, Parquet and CSV, through pyarrow.

Every write is atomic: the table goes to a temporary file beside the target, then
``os.replace`` puts it in place, so a killed job never leaves a partial file under the name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet",
           ".pq": "parquet", ".csv": "csv"}


def file_format(path: str | Path, given: str | None = None, default: str | None = None) -> str:
    """``given``, or the format the file name's extension says, or ``default`` (a folder's
    files: Ray Data writes ``--output`` as a folder) where the name has no known extension."""
    if given:
        if given not in set(FORMATS.values()):
            raise ValueError(f"format must be jsonl, parquet or csv, not {given!r}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS and default:
        return default
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path} from its extension: name it .jsonl, "
                         ".parquet or .csv, or give --input-format/--output-format")
    return FORMATS[suffix]


def read_table(path: str | Path, fmt: str | None = None,
               text_columns: tuple[str, ...] = ()) -> pa.Table:
    """Read a whole file; ``text_columns`` are read as strings whatever they look like."""
    fmt = file_format(path, fmt)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        elif fmt == "csv":
            types = dict.fromkeys(text_columns, pa.string())
            table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
                column_types=types, strings_can_be_null=False))
        else:
            table = _read_jsonl(path, text_columns)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"cannot read {path} as {fmt}: {exc}") from exc
    return table


def _read_jsonl(path: str | Path, text_columns: tuple[str, ...]) -> pa.Table:
    if Path(path).stat().st_size == 0:
        return pa.table({})
    schema = pa.schema([(c, pa.string()) for c in text_columns])
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
    table = pa_json.read_json(path, parse_options=options)
    # the explicit schema's columns come first: put them back in the file's order
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    try:
        order = [k for k in json.loads(first) if k in table.column_names]
    except (json.JSONDecodeError, TypeError):
        return table
    # a text column the file lacks comes back all null: drop it
    rest = [c for c in table.column_names if c not in order and not (
        c in text_columns and table.column(c).null_count == table.num_rows)]
    return table.select(order + rest)


def write_table(table: pa.Table, path: str | Path, fmt: str | None = None) -> None:
    """Write ``table`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    fmt = file_format(path, fmt)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "parquet":
            pq.write_table(table, tmp)
        elif fmt == "csv":
            pa_csv.write_csv(table, tmp)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
