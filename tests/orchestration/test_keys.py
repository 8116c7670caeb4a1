"""Partition keys are validated where paths are built (`longvila.layout`): a key added by hand in the UI
such as ``../..`` never becomes a lake path, and its run fails with a message naming the key."""

from __future__ import annotations

import shutil

import pytest
from dagster import DagsterInstance

from longvila import layout
from longvila.errors import InputError
from longvila.keys import partition_key_for


@pytest.mark.parametrize("key", ["../..", "..", "a/b-0123abcd", "/etc/passwd", "", "A-0123ABCD", "x-0123abc",
                                 "ok-0123abcd/../../x", "video-0123abcd\n"])
def test_layout_refuses_foreign_keys(key):
    with pytest.raises(InputError, match="not a video partition key"):
        layout.layer_path("/lake", "probe", key)
    with pytest.raises(InputError):
        layout.clip_files_dir("/lake", key)


def test_layout_accepts_generated_keys_and_plain_names():
    key = partition_key_for("dir/Some Video (1).mp4")
    assert layout.layer_path("/lake", "shots", key) == f"/lake/shots/{key}.parquet"
    assert layout.dataset_dir("/lake", "stage1_dataset") == "/lake/datasets/stage1_dataset"
    for bad in ("..", "../x", "a/b", ".hidden", ""):
        with pytest.raises(InputError):
            layout.dataset_dir("/lake", bad)
    with pytest.raises(InputError, match="unknown layer"):
        layout.layer_path("/lake", "../probe", key)


def test_a_dotdot_partition_added_from_the_ui_fails_its_run_and_writes_nothing(tmp_path, small_video_cache, helpers):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copyfile(small_video_cache[0], src / "a.mp4")
    storage = tmp_path / "deep" / "lake"
    defs, lake = helpers.curation_defs(str(src), str(storage))
    inst = DagsterInstance.ephemeral()
    helpers.tick(inst, lake)
    inst.add_dynamic_partitions("videos", ["../.."])  # what the UI's "add partition" allows
    before = sorted(p for p in tmp_path.rglob("*"))
    o = helpers.run_partition(defs, inst, "../..")
    assert not o.success
    assert "'../..'" in o.failures[0]["description"]
    assert sorted(p for p in tmp_path.rglob("*")) == before
