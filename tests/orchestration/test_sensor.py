"""The new-video sensor and the scan behind it: new / changed / touched / removed / reverted videos, cursor,
manifest, rejections, and ticks whose cost does not depend on file sizes."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from dagster import DagsterInstance, SkipReason

from assets.partitions import videos
from assets.resources import LakeResource
from longvila import sources
from longvila.keys import partition_key_for
from longvila.settings import Settings


@pytest.fixture()
def source(tmp_path, small_video_cache):
    src = tmp_path / "raw"
    (src / "nested" / "deeper").mkdir(parents=True)
    shutil.copyfile(small_video_cache[0], src / "a.mp4")
    shutil.copyfile(small_video_cache[1], src / "nested" / "deeper" / "B clip.MOV")
    (src / "notes.txt").write_text("ignored")
    return src


def _selection(req) -> list[str]:
    return [k.to_user_string() for k in req.asset_selection]


def test_new_changed_touched_removed(tmp_path, source, small_video_cache, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    ka, kb = partition_key_for("a.mp4"), partition_key_for("nested/deeper/B clip.MOV")

    # new videos: partitions added, one run each for the whole per-video chain
    r1 = helpers.tick(inst, lake)
    assert sorted(r.partition_key for r in r1.run_requests) == sorted([ka, kb])
    assert all(_selection(r) == helpers.curation_chain for r in r1.run_requests)
    assert sorted(inst.get_dynamic_partitions(videos.name)) == sorted([ka, kb])
    manifest = json.loads((tmp_path / "lake" / "manifest" / "videos.json").read_text())
    assert manifest["videos"][kb]["relpath"] == "nested/deeper/B clip.MOV"
    assert manifest["videos"][kb]["url"] == str(source / "nested" / "deeper" / "B clip.MOV")
    assert lake.video_entry(ka)["url"] == str(source / "a.mp4")

    # nothing changed: no runs
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert list(r2.run_requests) == [] and not r2.dynamic_partitions_requests

    # touched (new mtime): raw_video only, which re-hashes; automation decides on the hash (test_daemon)
    st = os.stat(source / "a.mp4")
    os.utime(source / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    r3 = helpers.tick(inst, lake, r2.cursor)
    assert [(r.partition_key, _selection(r)) for r in r3.run_requests] == [(ka, ["raw_video"])]

    # changed bytes: exactly that partition, with a new run key
    shutil.copyfile(small_video_cache[2], source / "a.mp4")
    r4 = helpers.tick(inst, lake, r3.cursor)
    assert [r.partition_key for r in r4.run_requests] == [ka]
    assert len({r.run_key for r in (*r1.run_requests, *r3.run_requests, *r4.run_requests)}) == 4

    # removed: marked with when and why; the partition and its history stay
    os.unlink(source / "nested" / "deeper" / "B clip.MOV")
    r5 = helpers.tick(inst, lake, r4.cursor)
    assert list(r5.run_requests) == []
    assert sorted(inst.get_dynamic_partitions(videos.name)) == sorted([ka, kb])
    entry = lake.read_manifest()["videos"][kb]
    assert entry["status"] == "removed" and entry["removed_at"] and str(source) in entry["removed_reason"]
    assert lake.present_keys() == [ka]
    with pytest.raises(Exception, match="removed from the source"):
        lake.video_entry(kb)
    # the UI's listing: a materialisation of the external asset video_source, reported by the tick
    (report,) = r5.asset_events
    md = report.metadata
    assert report.asset_key.to_user_string() == "video_source" and md["removed"].value == 1
    assert kb in md["removed_videos"].value and "nested/deeper/B clip.MOV" in md["removed_videos"].value
    assert entry["removed_at"] in md["removed_videos"].value and md["present"].value == 1
    assert not r4.asset_events or r4.asset_events[0].metadata["removed"].value == 0

    # back again: same key, a raw_video run (its hash decides what else re-runs)
    shutil.copyfile(small_video_cache[1], source / "nested" / "deeper" / "B clip.MOV")
    r6 = helpers.tick(inst, lake, r5.cursor)
    assert [(r.partition_key, _selection(r)) for r in r6.run_requests] == [(kb, ["raw_video"])]
    assert lake.present_keys() == sorted([ka, kb])


def test_reverted_content_gets_a_new_run_key(tmp_path, source, small_video_cache, helpers):
    """A -> B -> A with A's exact fingerprint restored (what S3 does: the same bytes get the same ETag):
    every change runs, because the run key holds the change's generation."""
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    a = source / "a.mp4"
    st = os.stat(a)
    r1 = helpers.tick(inst, lake)
    shutil.copyfile(small_video_cache[2], a)
    r2 = helpers.tick(inst, lake, r1.cursor)
    shutil.copyfile(small_video_cache[0], a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # fingerprint identical to the first one
    r3 = helpers.tick(inst, lake, r2.cursor)
    ka = partition_key_for("a.mp4")
    keys = [next(r.run_key for r in r.run_requests if r.partition_key == ka) for r in (r1, r2, r3)]
    assert len(set(keys)) == 3
    assert lake.read_manifest()["videos"][ka]["generation"] == 3


def test_tick_cost_does_not_depend_on_file_size(tmp_path, source, helpers):
    """A 64 GiB (sparse) video is registered from its listing alone; its bytes are hashed by raw_video."""
    huge = source / "huge.mkv"
    with open(huge, "wb") as f:
        f.truncate(64 << 30)
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    t0 = time.perf_counter()
    r = helpers.tick(inst, lake)
    assert time.perf_counter() - t0 < 10.0
    assert partition_key_for("huge.mkv") in {q.partition_key for q in r.run_requests}
    assert lake.read_manifest()["videos"][partition_key_for("huge.mkv")]["size"] == 64 << 30


def test_empty_listing_is_an_outage_not_a_mass_removal(tmp_path, source, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    r1 = helpers.tick(inst, lake)
    for p in list(source.rglob("*")):
        if p.is_file():
            p.unlink()
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert list(r2.run_requests) == [] and not r2.dynamic_partitions_requests
    assert all(v["status"] == "present" for v in lake.read_manifest()["videos"].values())


def test_missing_source_root_skips(tmp_path, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(tmp_path / "nope"), storage=str(tmp_path / "lake"))
    assert isinstance(helpers.tick(inst, lake), SkipReason)


def test_rejects_escaping_symlinks_and_ignores_hidden(bad_inputs_dir, tmp_path):
    src, _ = bad_inputs_dir
    settings = Settings(source=str(src), storage=str(tmp_path / "lake"))
    res = sources.scan_source(settings, previous={})
    assert "escape.mp4" in res.rejected and "outside the source root" in res.rejected["escape.mp4"]
    rels = {v["relpath"] for v in res.manifest["videos"].values()}
    assert "escape.mp4" not in rels
    assert "sub/inside_link.mp4" in rels  # a symlink that stays inside the root is fine
    assert not any(r.startswith(".") for r in rels)
    assert "audio_only.m4a" not in rels and res.ignored >= 2  # README.txt, .m4a: not video extensions
    assert {"with space.mp4", "ünïcødé_视频.mp4", "quote's \"double\".mp4", "$(touch pwned).mp4"} <= rels
    assert res.manifest["rejected"]["escape.mp4"] == res.rejected["escape.mp4"]


def test_cursor_is_the_committed_state(tmp_path, source, helpers):
    """A tick that wrote the manifest but whose cursor was never committed (the daemon failed after the
    scan) is redone from the old cursor: the change is requested again, with the same run key."""
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    r1 = helpers.tick(inst, lake)
    st = os.stat(source / "a.mp4")
    os.utime(source / "a.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    lost = helpers.tick(inst, lake, r1.cursor)  # its cursor is "lost"
    again = helpers.tick(inst, lake, r1.cursor)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in lost.run_requests] != []


def test_manifest_rewritten_only_on_change(tmp_path, source, helpers):
    inst = DagsterInstance.ephemeral()
    lake = LakeResource(source=str(source), storage=str(tmp_path / "lake"))
    r1 = helpers.tick(inst, lake)
    m = tmp_path / "lake" / "manifest" / "videos.json"
    before = m.stat().st_mtime_ns, m.read_bytes()
    time.sleep(0.01)
    helpers.tick(inst, lake, r1.cursor)
    assert (m.stat().st_mtime_ns, m.read_bytes()) == before
