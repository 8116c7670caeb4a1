"""The new-video sensor: new / changed / touched / deleted videos, cursor, manifest, rejections."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from dagster import DagsterInstance, SkipReason

from longvila.keys import partition_key_for
from orchestration.partitions import videos
from orchestration.resources import LakeResource
from orchestration.sensors import scan_source


@pytest.fixture()
def source(tmp_path, small_video_cache):
    src = tmp_path / "raw"
    (src / "nested" / "deeper").mkdir(parents=True)
    shutil.copyfile(small_video_cache[0], src / "a.mp4")
    shutil.copyfile(small_video_cache[1], src / "nested" / "deeper" / "B clip.MOV")
    (src / "notes.txt").write_text("ignored")
    return src


def test_new_changed_touched_deleted(tmp_path, source, small_video_cache, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    ka, kb = partition_key_for("a.mp4"), partition_key_for("nested/deeper/B clip.MOV")

    r1 = helpers.tick(inst, lake)
    assert sorted(r.partition_key for r in r1.run_requests) == sorted([ka, kb])
    assert all([k.to_user_string() for k in r.asset_selection] == ["raw_video"] for r in r1.run_requests)
    assert sorted(inst.get_dynamic_partitions(videos.name)) == sorted([ka, kb])
    manifest = json.loads((tmp_path / "lake" / "manifest" / "videos.json").read_text())
    assert manifest["videos"][kb]["relpath"] == "nested/deeper/B clip.MOV"
    assert manifest["videos"][kb]["url"] == str(source / "nested" / "deeper" / "B clip.MOV")
    assert lake.video_url(ka) == str(source / "a.mp4")

    # nothing changed: no runs
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert list(r2.run_requests) == [] and not r2.dynamic_partitions_requests

    # touched (new mtime, same bytes): hashed, confirmed unchanged, no run
    st = os.stat(source / "a.mp4")
    os.utime(source / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r3 = helpers.tick(inst, lake, r2.cursor)
    assert list(r3.run_requests) == []

    # changed bytes: exactly that partition, with a new run key
    shutil.copyfile(small_video_cache[2], source / "a.mp4")
    r4 = helpers.tick(inst, lake, r3.cursor)
    assert [r.partition_key for r in r4.run_requests] == [ka]
    assert r4.run_requests[0].run_key != r1.run_requests[[r.partition_key for r in r1.run_requests].index(ka)].run_key

    # deleted: partition removed, marked in the manifest, reported
    os.unlink(source / "nested" / "deeper" / "B clip.MOV")
    r5 = helpers.tick(inst, lake, r4.cursor)
    assert list(r5.run_requests) == []
    assert inst.get_dynamic_partitions(videos.name) == [ka]
    manifest = lake.read_manifest()
    assert manifest["videos"][kb]["status"] == "deleted" and manifest["videos"][kb]["deleted_at"]
    assert lake.present_keys() == [ka]
    with pytest.raises(Exception, match="deleted"):
        lake.video_url(kb)

    # back again: same key, new partition, a run
    shutil.copyfile(small_video_cache[1], source / "nested" / "deeper" / "B clip.MOV")
    r6 = helpers.tick(inst, lake, r5.cursor)
    assert [r.partition_key for r in r6.run_requests] == [kb]
    assert sorted(inst.get_dynamic_partitions(videos.name)) == sorted([ka, kb])


def test_empty_listing_is_an_outage_not_a_mass_deletion(tmp_path, source, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    r1 = helpers.tick(inst, lake)
    for p in list(source.rglob("*")):
        if p.is_file():
            p.unlink()
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert list(r2.run_requests) == [] and not r2.dynamic_partitions_requests
    assert len(inst.get_dynamic_partitions(videos.name)) == 2
    assert all(v["status"] == "present" for v in lake.read_manifest()["videos"].values())


def test_missing_source_root_skips(tmp_path, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(tmp_path / "nope"), storage=str(tmp_path / "lake"))
    assert isinstance(helpers.tick(inst, lake), SkipReason)


def test_rejects_escaping_symlinks_and_ignores_hidden(bad_inputs_dir, tmp_path):
    src, _ = bad_inputs_dir
    lake = LakeResource(source=str(src), storage=str(tmp_path / "lake"))
    res = scan_source(lake, previous={})
    assert "escape.mp4" in res.rejected and "outside the source root" in res.rejected["escape.mp4"]
    rels = {v["relpath"] for v in res.manifest["videos"].values()}
    assert "escape.mp4" not in rels
    assert "sub/inside_link.mp4" in rels  # a symlink that stays inside the root is fine
    assert not any(r.startswith(".") for r in rels)
    assert "audio_only.m4a" not in rels and res.ignored >= 2  # README.txt, .m4a: not video extensions
    assert {"with space.mp4", "ünïcødé_视频.mp4", "quote's \"double\".mp4", "$(touch pwned).mp4"} <= rels
    assert res.manifest["rejected"]["escape.mp4"] == res.rejected["escape.mp4"]


def test_hash_budget_defers_to_next_tick(tmp_path, source):
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    res = scan_source(lake, previous={}, hash_budget_s=-1.0)  # budget already spent
    assert res.new == [] and len(res.deferred) == 2 and res.deleted == []
    res2 = scan_source(lake, previous=res.manifest, hash_budget_s=60.0)
    assert len(res2.new) == 2 and not res2.deferred


def test_manifest_rewritten_only_on_change(tmp_path, source, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    r1 = helpers.tick(inst, lake)
    m = tmp_path / "lake" / "manifest" / "videos.json"
    before = m.stat().st_mtime_ns, m.read_bytes()
    time.sleep(0.01)
    helpers.tick(inst, lake, r1.cursor)
    assert (m.stat().st_mtime_ns, m.read_bytes()) == before
