"""Resumable parts of a job: each finished part is a file, written atomically, in a folder
next to the output (``OUTPUT.parts/``). A restarted job reads which parts exist and skips them;
the output is assembled from the parts at the end and the folder removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qrank.jobs.files import write_table

MANIFEST = "job.json"


class PartStore:
    """The parts folder of one output. ``manifest`` describes the job; a folder left by a
    different job (another input, model or part size) is refused rather than mixed in."""

    def __init__(self, output: str | Path, manifest: dict[str, Any]) -> None:
        output = Path(output)
        self.dir = output.with_name(output.name + ".parts")
        self.manifest = manifest

    def open(self) -> None:
        """Create the folder, or check that the one there is this job's; drop stray temps."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / MANIFEST
        if path.exists():
            found = json.loads(path.read_text(encoding="utf-8"))
            if found != self.manifest:
                diff = sorted(k for k in {*found, *self.manifest}
                              if found.get(k) != self.manifest.get(k))
                raise ValueError(f"{self.dir} holds the parts of another job ({', '.join(diff)} "
                                 "differ): remove it to start over, or choose another --output")
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True), encoding="utf-8")
            tmp.replace(path)
        for stray in self.dir.glob(".*.tmp-*"):
            stray.unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.dir / f"part-{index:06d}.parquet"

    def done(self) -> set[int]:
        """Indices of the finished parts."""
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("part-*.parquet")}

    def write(self, index: int, rows: np.ndarray, scores: list[float]) -> None:
        """Keep one finished part: its input row numbers and their scores."""
        table = pa.table({"row": pa.array(rows, pa.int64()),
                          "score": pa.array(scores, pa.float64())})
        write_table(table, self.path(index), "parquet")

    def assemble(self, num_rows: int) -> np.ndarray:
        """Every row's score from the parts; each row must be in exactly one part."""
        scores = np.full(num_rows, np.nan)
        seen = np.zeros(num_rows, dtype=np.int64)
        for index in sorted(self.done()):
            table = pq.read_table(self.path(index))
            rows = table.column("row").to_numpy()
            scores[rows] = table.column("score").to_numpy()
            np.add.at(seen, rows, 1)
        if not (seen == 1).all():
            missing, twice = int((seen == 0).sum()), int((seen > 1).sum())
            raise RuntimeError(f"the parts in {self.dir} do not cover the input once: "
                               f"{missing} rows missing, {twice} rows more than once")
        return scores

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
