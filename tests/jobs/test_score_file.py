"""``qrank score-file``: every row written once with the score LLM.score gives, in JSONL,
Parquet and CSV; a job killed midway and restarted scores only what is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from qrank import LLM
from qrank.cli import main
from qrank.jobs.files import file_format, read_table

QUERIES = ["What is the capital of China?", "how do plants make food", "数据库索引是什么"]
DOCS = ["The capital of China is Beijing.", "Photosynthesis turns light into sugar.",
        "索引是一种加快数据库查询的数据结构。", "Gravity pulls.", "", "Paris is in France.",
        "Leaves are green because of chlorophyll."]
INSTRUCTION = "Given a question, retrieve passages that answer it"
ENGINE = ["--dtype", "float32", "--threads", "1"]


def rows(n: int) -> list[dict]:
    """n rows, queries interleaved (so a query's rows are not next to each other in the file),
    every fifth with its own instruction."""
    out = []
    for i in range(n):
        row = {"id": f"r{i}", "query": QUERIES[i % 3], "document": DOCS[(i * 5) % 7] + f" #{i}"}
        row["instruction"] = INSTRUCTION if i % 5 == 0 else None
        out.append(row)
    return out


def write_jsonl(path, data: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data),
                    encoding="utf-8")


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(str(tiny_model), dtype="float32", threads=1)


def expected(llm, data: list[dict]) -> dict[str, float]:
    """What LLM.score gives for each row, by id."""
    out = {}
    for ins in {r["instruction"] for r in data}:
        sel = [r for r in data if r["instruction"] == ins]
        got = llm.score([r["query"] for r in sel], [r["document"] for r in sel],
                        instruction=ins, use_tqdm=False)
        out |= {r["id"]: o.outputs.score for r, o in zip(sel, got, strict=True)}
    return out


def score_file(*argv: str) -> dict:
    """Run the command in this process; its JSON summary."""
    from contextlib import redirect_stdout
    from io import StringIO

    buf = StringIO()
    with redirect_stdout(buf):
        assert main(["score-file", *argv, "--no-progress"]) == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def test_jsonl_to_parquet_scores_as_llm_score(tmp_path, tiny_model, llm):
    data = rows(23)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    write_jsonl(src, data)
    summary = score_file(str(src), "--output", str(out), "--model", str(tiny_model),
                         "--part-size", "4", *ENGINE)
    assert summary["rows"] == 23 and summary["parts"] == 6 and summary["rows_scored"] == 23
    table = pq.read_table(out)
    assert table.column_names == ["id", "query", "document", "instruction", "score"]
    assert table.column("id").to_pylist() == [r["id"] for r in data]  # input order kept
    want = expected(llm, data)
    for rid, s in zip(table.column("id").to_pylist(), table.column("score").to_pylist(),
                      strict=True):
        assert s == pytest.approx(want[rid], abs=1e-5)
    scores = table.column("score").to_pylist()
    assert max(scores) - min(scores) > 0.05  # the rows really differ
    assert not (tmp_path / "out.parquet.parts").exists()


def test_csv_and_parquet_with_named_columns_and_an_id(tmp_path, tiny_model, llm):
    data = rows(6)
    table = pa.table({"qid": [r["id"] for r in data], "q": [r["query"] for r in data],
                      "passage": [r["document"] for r in data]})
    pa_csv.write_csv(table, tmp_path / "in.csv")
    pq.write_table(table, tmp_path / "in.parquet")
    common = ["--model", str(tiny_model), "--query-column", "q", "--document-column",
              "passage", "--id-column", "qid", *ENGINE]
    score_file(str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.jsonl"), *common)
    score_file(str(tmp_path / "in.parquet"), "-o", str(tmp_path / "out.csv"), *common)
    want = expected(llm, [{**r, "instruction": None} for r in data])
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [set(x) for x in lines] == [{"qid", "score"}] * 6
    assert [x["score"] for x in lines] == pytest.approx([want[r["id"]] for r in data], abs=1e-5)
    back = read_table(tmp_path / "out.csv")
    assert back.column("qid").to_pylist() == [r["id"] for r in data]
    assert back.column("score").to_pylist() == pytest.approx([x["score"] for x in lines],
                                                             abs=1e-9)


def test_bad_inputs_are_clear_errors(tmp_path, tiny_model, capsys):
    src = tmp_path / "in.jsonl"
    write_jsonl(src, [{"question": "q", "document": "d"}])
    argv = ["score-file", str(src), "-o", str(tmp_path / "o.jsonl"), "--model", str(tiny_model)]
    assert main(argv) == 1
    assert "no column 'query'" in capsys.readouterr().err
    assert main([*argv[:2], "-o", str(tmp_path / "o.txt"), *argv[4:]]) == 1
    assert "cannot tell the format" in capsys.readouterr().err
    (tmp_path / "o.jsonl").write_text("")
    write_jsonl(src, [{"query": "q", "document": "d"}])
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_a_folder_without_an_extension_takes_the_default_format():
    """score-file --ray writes a folder: ``-o scored_dir`` (docs/api.md) takes the input's."""
    assert file_format("scored_dir", default="parquet") == "parquet"
    assert file_format("scored/", default="csv") == "csv"
    assert file_format("scored.jsonl", default="parquet") == "jsonl"
    assert file_format("scored_dir", "csv", default="parquet") == "csv"
    with pytest.raises(ValueError, match="cannot tell the format"):
        file_format("scored_dir")


def test_killed_midway_and_restarted_writes_every_row_once(tmp_path, tiny_model, llm):
    data = rows(30)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    write_jsonl(src, data)
    argv = [str(src), "-o", str(out), "--model", str(tiny_model), "--part-size", "3", *ENGINE]
    proc = subprocess.Popen([sys.executable, "-m", "qrank.cli", "score-file", *argv,
                             "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no part was written"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not out.exists()  # no partial output
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert 2 <= len(finished) < 10

    summary = score_file(*argv)
    assert summary["parts_skipped"] >= len(finished)
    assert summary["rows_scored"] == 30 - 3 * summary["parts_skipped"]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(r["id"] for r in data)  # each row once
    want = expected(llm, data)
    assert [x["score"] for x in lines] == pytest.approx([want[x["id"]] for x in lines],
                                                         abs=1e-5)
    assert not parts.exists()
