"""``score-file --ray`` (``qrank.ray.score_dataset`` under it) on the session's local Ray cluster
gives the scores LLM.score gives."""

from __future__ import annotations

import json
from contextlib import redirect_stdout
from io import StringIO

import pyarrow as pa
import pyarrow.json as pa_json
import pytest

from qrank import LLM
from qrank.cli import main

QUERIES = ["What is the capital of China?", "how do plants make food", "数据库索引是什么"]
ROWS = [{"id": i, "query": QUERIES[i % 3], "document": f"document {i}: " + "words " * (i % 7)}
        for i in range(24)]
ENGINE = ["--dtype", "float32", "--threads", "1"]


@pytest.fixture(scope="module")
def want(tiny_model) -> dict[int, float]:
    llm = LLM(str(tiny_model), dtype="float32", threads=1)
    out = llm.score([r["query"] for r in ROWS], [r["document"] for r in ROWS], use_tqdm=False)
    return {r["id"]: o.outputs.score for r, o in zip(ROWS, out, strict=True)}


def test_score_file_on_ray_scores_as_llm_score(ray_cluster, tiny_model, tmp_path, want):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS))
    out = tmp_path / "scored"  # a folder without an extension: the input's format (JSONL)
    buf = StringIO()
    with redirect_stdout(buf):
        rc = main(["score-file", str(src), "-o", str(out), "--model", str(tiny_model), "--ray",
                   "--concurrency", "2", "--num-cpus-per-actor", "0.25", "--no-progress",
                   *ENGINE])
    assert rc == 0
    assert json.loads(buf.getvalue().splitlines()[-1])["rows"] == len(ROWS)
    files = sorted(out.iterdir())  # Ray Data's writer: a folder of files
    assert files and all(f.suffix == ".json" for f in files), files
    table = pa.concat_tables([pa_json.read_json(f) for f in files])
    got = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(),
                   strict=True))
    assert sorted(got) == sorted(want)  # every row once
    for i, s in got.items():
        assert s == pytest.approx(want[i], abs=1e-5)
