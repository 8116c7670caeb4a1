"""`longvila demo` on a tiny source: every asset of the Definitions runs, failures are isolated and
reported by file, summaries come from the modules' hooks, history lands in DAGSTER_HOME."""

from __future__ import annotations

import shutil
import types

from dagster import AssetKey, DagsterInstance, Definitions, MaterializeResult, asset

from assets import curation as curation_assets
from orchestration.demo import run_demo
from assets.resources import LakeResource


def _extra_layer():
    """A stand-in for a later layer: an unpartitioned aggregate over every video's clip frames."""

    @asset(deps=[curation_assets.CLIP_FRAMES], group_name="extra")
    def frames_total(lake: LakeResource) -> MaterializeResult:
        import pyarrow.parquet as pq

        from longvila import io as lio

        n = 0
        for key in lake.present_keys():
            url = lake.layer_url("clip_frames", key)
            if lio.exists(url, lake.settings()):
                n += pq.read_metadata(url).num_rows
        return MaterializeResult(metadata={"frames": n})

    return types.SimpleNamespace(__name__="extra_layer", defs=Definitions(assets=[frames_total]))


def test_demo_runs_everything_and_isolates_failures(tmp_path, dagster_home, monkeypatch, small_video_cache):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copyfile(small_video_cache[0], src / "good one.mp4")
    (src / "zero.mp4").write_bytes(b"")
    storage = tmp_path / "lake"
    monkeypatch.setenv("LONGVILA_SOURCE", "unused")  # restored after the test (run_demo overrides it)
    monkeypatch.setenv("LONGVILA_STORAGE", "unused")
    lines: list[str] = []
    code = run_demo(source=str(src), storage=str(storage), modules=[curation_assets, _extra_layer()],
                    log=lines.append)
    out = "\n".join(lines)
    assert code == 1, out
    assert "FAILED" in out and "zero.mp4" in out and "empty" in out
    assert "ok " in out and "good one.mp4" in out
    # the curation group's summary: one line per video
    assert "== curation ==" in out and "dur_s" in out
    assert "time per asset group" in out and "curation" in out

    inst = DagsterInstance.get()  # the real instance under DAGSTER_HOME has the history
    assert str(dagster_home) in str(inst.root_directory)
    runs = inst.get_runs()
    assert len(runs) == 3  # two videos + the unpartitioned batch
    frames = inst.get_latest_materialization_event(AssetKey("frames_total")).asset_materialization.metadata["frames"]
    assert frames.value == 16  # 2 clips x 8 frames of the good video; the bad one has none
    lake = LakeResource(source=str(src), storage=str(storage))
    assert sorted(inst.get_dynamic_partitions("videos")) == sorted(lake.present_keys())
    assert (storage / "manifest" / "videos.json").is_file()


def test_demo_cli_registration():
    from orchestration.cli import build_parser

    args = build_parser().parse_args(["demo", "--source", "s3://b/raw", "--storage", "/tmp/lake", "--skip-generate"])
    assert args.command == "demo" and args.source == "s3://b/raw" and args.skip_generate and callable(args.func)
