"""Shared fixtures for the orchestration tests (no `tests` package: pytest runs in importlib mode)."""

from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import pytest

# Small synthetic videos: ~2.4 s, 160x96, two shots each; generating one costs ~0.2 s.
SMALL = dict(fps=25, size=(160, 96))


def make_small_video(path: Path, variant: int = 0) -> Path:
    from curation.synth import SOURCES, make_synthetic_video

    a, b = SOURCES[variant % len(SOURCES)], SOURCES[(variant + 2) % len(SOURCES)]
    make_synthetic_video(str(path), [(1.2, a), (1.2, b)], **SMALL)
    return path


def curation_defs(source: str, storage: str, **lake_kw):
    """Merged Definitions restricted to the curation layer, in-process executor, explicit lake."""
    from dagster import in_process_executor

    from assets import curation as curation_assets
    from assets.resources import LakeResource
    from orchestration.definitions import build_defs

    lake = LakeResource(source=source, storage=storage, **lake_kw)
    return build_defs(modules=[curation_assets], lake=lake, executor=in_process_executor), lake


def curation_keys(defs):
    from assets.partitions import videos

    g = defs.resolve_asset_graph()
    return [k for k in g.toposorted_asset_keys
            if g.get(k).is_materializable and getattr(g.get(k).partitions_def, "name", None) == videos.name]


def run_partition(defs, instance, key, asset_keys=None):
    """Materialise the curation lineage (or `asset_keys`) of one partition; returns a BatchOutcome."""
    from orchestration.demo import run_batch

    return run_batch(defs, instance, asset_keys or curation_keys(defs), key, key)


def apply_sensor_result(instance, result):
    """What the sensor daemon does with a SensorResult's (add-only) dynamic partition requests."""
    for req in result.dynamic_partitions_requests or []:
        existing = set(instance.get_dynamic_partitions(req.partitions_def_name))
        instance.add_dynamic_partitions(req.partitions_def_name, [k for k in req.partition_keys if k not in existing])


CURATION_CHAIN = ["raw_video", "video_probe", "video_frames", "video_shots", "video_clips", "clip_frames"]


def tick(instance, lake, cursor=None):
    """Evaluate the new-video sensor of the curation layer once and apply its partition requests (the
    function-level twin of a daemon tick; `test_daemon.py` runs the real daemon)."""
    from dagster import AssetKey, build_sensor_context

    from orchestration.sensors import evaluate_new_videos

    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={"lake": lake})
    result = evaluate_new_videos(ctx, lake, [AssetKey(k) for k in CURATION_CHAIN])
    if hasattr(result, "dynamic_partitions_requests"):
        apply_sensor_result(instance, result)
    return result


def lake_files(storage: Path) -> list[str]:
    return sorted(str(p.relative_to(storage)) for p in storage.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def helpers():
    return types.SimpleNamespace(
        curation_chain=CURATION_CHAIN,
        make_small_video=make_small_video,
        curation_defs=curation_defs,
        curation_keys=curation_keys,
        run_partition=run_partition,
        apply_sensor_result=apply_sensor_result,
        tick=tick,
        lake_files=lake_files,
    )


@pytest.fixture(scope="session")
def small_video_cache(tmp_path_factory):
    """Three distinct small videos, made once per session; copy them where needed."""
    d = tmp_path_factory.mktemp("small_videos")
    return [make_small_video(d / f"v{i}.mp4", variant=3 * i) for i in range(3)]


@pytest.fixture(scope="session")
def bad_inputs_dir(tmp_path_factory):
    """curation.synth.make_bad_inputs plus an escaping symlink, a hidden partial file and a text file."""
    from curation.synth import make_bad_inputs

    root = tmp_path_factory.mktemp("bad_src")
    src = root / "videos"
    expected = make_bad_inputs(str(src))
    outside = root / "outside.mp4"
    shutil.copyfile(src / "with space.mp4", outside)
    os.symlink(outside, src / "escape.mp4")
    (src / "sub").mkdir()
    os.symlink(src / "with space.mp4", src / "sub" / "inside_link.mp4")  # stays inside the root: fine
    (src / ".partial.mp4.tmp-123").write_bytes(b"partial")
    (src / "README.txt").write_text("not a video")
    return src, expected


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
