"""bench/scale.py at CI size: the one command runs on SQLite and PostgreSQL, in per-video and shard mode,
and its measurements come from working code paths (the audit finds every fabricated video)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_scale_runs_at_ci_size(tmp_path):
    out = tmp_path / "scale"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "12", "--shard-sizes", "60",
                           "--shard-size", "20", "--db", "both", "--steps", "sensor,lineage,automation",
                           "--limit-s", "240", "--out", str(out)], capture_output=True, text=True, timeout=1200,
                          cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {(r["db"], r["mode"]) for r in rows} == {(db, mode) for db in ("sqlite", "postgres")
                                                    for mode in ("videos", "shards of 20")}
    for r in rows:
        assert r["lineage raw videos"] == r["videos"] and r["lineage fed"] is True, r
        assert r["automation first"] is not None and r["partition add"] is not None, r
    per_video = [r for r in rows if r["mode"] == "videos"]
    assert all(r["runs after first tick"] == 12 for r in per_video)  # one queued run per new video
    assert "| videos | partitions | db |" in out.with_suffix(".md").read_text()
