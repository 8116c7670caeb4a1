"""The new-video sensor at scale: a bounded number of new videos per tick, partition adds in chunks, and
a cursor of constant size (the scan state lives in the lake)."""

from __future__ import annotations

import json

from dagster import DagsterInstance, build_sensor_context
from dagster._core.definitions.dynamic_partitions_request import AddDynamicPartitionsRequest

from assets.resources import LakeResource
from longvila.keys import partition_key_for


def _tick(instance, lake, cursor):
    from assets.curation import RAW_VIDEO
    from orchestration.sensors import evaluate_new_videos

    context = build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
    result = evaluate_new_videos(context, lake, [RAW_VIDEO])
    for req in result.dynamic_partitions_requests or []:  # what the daemon does with them
        assert isinstance(req, AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_new_videos_are_taken_in_bounded_ticks(tmp_path, monkeypatch):
    import orchestration.sensors as sensors

    src, lake_dir = tmp_path / "raw", tmp_path / "lake"
    src.mkdir()
    for i in range(25):
        (src / f"clip{i:03d}.mp4").write_bytes(b"x" * (i + 1))
    monkeypatch.setenv("LONGVILA_SENSOR_MAX_NEW", "10")
    monkeypatch.setattr(sensors, "PARTITION_ADD_CHUNK", 4)
    lake = LakeResource(source=str(src), storage=str(lake_dir))
    cursor, seen, sizes = None, [], []
    with DagsterInstance.ephemeral() as inst:
        for _ in range(4):
            res = _tick(inst, lake, cursor)
            cursor = res.cursor
            sizes.append(len(cursor))
            seen.append([r.partition_key for r in res.run_requests])
            if seen[-1]:
                assert [len(r.partition_keys) for r in res.dynamic_partitions_requests] == \
                    [4] * (len(seen[-1]) // 4) + ([len(seen[-1]) % 4] if len(seen[-1]) % 4 else [])
        assert [len(s) for s in seen] == [10, 10, 5, 0]
        assert len({k for s in seen for k in s}) == 25
        assert len(inst.get_dynamic_partitions("videos")) == 25
    # the cursor names the scan state in the lake: constant size, the state file holds every video
    assert max(sizes) < 200 and len(set(sizes)) <= 2
    state = json.loads(cursor)
    stored = json.loads((lake_dir / "manifest" / "scan-state" / f"{state['state']}.json").read_text())
    assert state["videos"] == len(stored) == 25
    # a touched file is "changed" once, then steady
    (src / "clip003.mp4").write_bytes(b"changed")
    with DagsterInstance.ephemeral() as inst:
        res = _tick(inst, lake, cursor)
        assert [r.partition_key for r in res.run_requests] == [partition_key_for("clip003.mp4")]
        assert _tick(inst, lake, res.cursor).run_requests == []


def test_old_state_files_are_pruned(tmp_path):
    from longvila import sources

    lake = LakeResource(source=str(tmp_path / "raw"), storage=str(tmp_path / "lake"))
    settings = lake.settings()
    for i in range(sources.STATE_KEEP + 5):
        manifest = {"videos": {f"k{j}": {"fingerprint": f"{j}:{i}", "generation": 1, "status": "present"}
                               for j in range(3)}}
        cursor = sources.encode_cursor(manifest, settings)
    files = list((tmp_path / "lake" / "manifest" / "scan-state").iterdir())
    assert len(files) == sources.STATE_KEEP
    assert f"{json.loads(cursor)['state']}.json" in {f.name for f in files}


def test_steps_parse_the_manifest_once_while_it_is_unchanged(tmp_path, monkeypatch):
    """Every per-video step looks up its video's entry; the manifest (tens of MB at 100k videos) is parsed once
    per process while its file is unchanged, and again after a scan rewrites it. Entries are private copies."""
    from longvila import io as lio
    from longvila import sources

    src, lake_dir = tmp_path / "raw", tmp_path / "lake"
    src.mkdir()
    for i in range(3):
        (src / f"v{i}.mp4").write_bytes(b"x" * (i + 1))
    lake = LakeResource(source=str(src), storage=str(lake_dir))
    with DagsterInstance.ephemeral() as inst:
        _tick(inst, lake, None)
    parses = []
    real = lio.read_json
    monkeypatch.setattr(lio, "read_json", lambda url, settings=None: parses.append(url) or real(url, settings))
    key = partition_key_for("v0.mp4")
    for _ in range(5):
        entry = lake.video_entry(key)
        entry["url"] = "changed by a caller"
    assert len(parses) == 1 and lake.video_entry(key)["url"].endswith("v0.mp4")
    assert len(lake.present_keys()) == 3 and len(parses) == 1
    (src / "v3.mp4").write_bytes(b"new")
    with DagsterInstance.ephemeral() as inst:
        _tick(inst, lake, None)  # reads and rewrites the manifest
    parses.clear()
    assert len(lake.present_keys()) == 4 and len(parses) == 1
    assert sources.shared_manifest(lake.settings()) is sources.shared_manifest(lake.settings())
