"""Curation steps decode the bytes raw_video hashed, never a source file swapped since (issue 11, item 6)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from dagster import AssetKey, DagsterInstance


def test_swapped_source_is_never_silently_curated(tmp_path, small_video_cache, helpers):
    from orchestration.sensors import register_videos

    src = tmp_path / "raw"
    src.mkdir()
    shutil.copyfile(small_video_cache[0], src / "v.mp4")
    hashed = hashlib.sha256(small_video_cache[0].read_bytes()).hexdigest()
    swapped = hashlib.sha256(small_video_cache[1].read_bytes()).hexdigest()
    defs, lake = helpers.curation_defs(str(src), str(tmp_path / "lake"))
    inst = DagsterInstance.ephemeral()
    (key,) = register_videos(inst, lake).new
    assert helpers.run_partition(defs, inst, key, [AssetKey("raw_video")]).success

    shutil.copyfile(small_video_cache[1], src / "v.mp4")  # replaced after raw_video hashed it
    assert helpers.run_partition(defs, inst, key, [AssetKey("video_probe")]).success
    probe = json.loads((tmp_path / "lake" / "probe" / f"{key}.json").read_text())
    assert probe["sha256"] == hashed  # probed the hashed bytes (the cached copy), not the new file

    cache_dir = os.environ["LONGVILA_CACHE_DIR"]
    for name in os.listdir(cache_dir):  # evicted (or another machine): the source must be re-verified
        if not name.startswith("."):
            os.unlink(os.path.join(cache_dir, name))
    out = helpers.run_partition(defs, inst, key, [AssetKey("video_shots")])
    assert not out.success
    (failure,) = out.failures
    assert "source changed since raw_video hashed it" in failure["description"]
    assert hashed in failure["description"] and swapped in failure["description"]
    assert not (tmp_path / "lake" / "shots" / f"{key}.parquet").exists()
