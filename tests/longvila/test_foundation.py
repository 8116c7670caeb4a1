"""The shared foundation: atomic writes, hashing, the remote-download cache and partition keys."""

from __future__ import annotations

import os
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from longvila import io as lio
from longvila.keys import is_valid_key, partition_key_for


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if ".tmp-" in p.name]


def test_atomic_write_publishes_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError):
        with lio.atomic_write(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert not target.exists() and _leftovers(target.parent) == []
    lio.write_json(target, {"a": 1})
    assert lio.read_json(target) == {"a": 1}
    # a failed rewrite keeps the previous complete file
    with pytest.raises(RuntimeError):
        with lio.atomic_write(target, "wb") as f:
            f.write(b"{broken")
            raise RuntimeError("boom")
    assert lio.read_json(target) == {"a": 1} and _leftovers(target.parent) == []


def test_atomic_write_remote_uploads_whole_object_or_nothing():
    fs = fsspec.filesystem("memory")
    url = "memory://bucket/lake/x.bin"
    with pytest.raises(ValueError):
        with lio.atomic_write(url, "wb") as f:
            f.write(b"partial")
            raise ValueError("fail")
    assert not fs.exists("/bucket/lake/x.bin")
    lio.write_bytes(url, b"complete")
    assert lio.read_bytes(url) == b"complete"


def test_parquet_roundtrip_and_hash_of_written_bytes(tmp_path):
    table = pa.table({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    data = lio.parquet_bytes(table)
    url = tmp_path / "t.parquet"
    lio.write_parquet(table, url)
    assert lio.read_parquet(url).equals(table)
    assert lio.sha256_file(url) == lio.sha256_bytes(data)  # the hash recorded is the hash of what is stored


def test_atomic_dir_replaces_whole_tree_or_nothing(tmp_path):
    final = tmp_path / "ckpt"
    with lio.atomic_dir(final) as d:
        (d / "w.bin").write_bytes(b"1")
    h1 = lio.sha256_tree(final)
    with pytest.raises(RuntimeError):
        with lio.atomic_dir(final) as d:
            (d / "w.bin").write_bytes(b"2")
            raise RuntimeError("killed")
    assert (final / "w.bin").read_bytes() == b"1" and lio.sha256_tree(final) == h1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with lio.atomic_dir(final) as d:
        (d / "w.bin").write_bytes(b"2")
    assert lio.sha256_tree(final) != h1


def test_remote_cache_downloads_once_and_notices_changes(tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    fs.pipe("/videos/a.mp4", b"A" * 1000)
    url = "memory://videos/a.mp4"
    calls = []
    real_get = type(fs).get_file
    monkeypatch.setattr(type(fs), "get_file", lambda self, *a, **k: (calls.append(a[0]), real_get(self, *a, **k))[1])
    cache = tmp_path / "cache"
    with lio.local_copy(url, suffix=".mp4", cache_dir=cache) as p1:
        assert Path(p1).read_bytes() == b"A" * 1000 and p1.endswith(".mp4")
    with lio.local_copy(url, suffix=".mp4", cache_dir=cache) as p2:
        assert p2 == p1
    assert len(calls) == 1  # the second step reused the cached copy
    fs.pipe("/videos/a.mp4", b"B" * 2000)  # the object changed: a new fingerprint, a fresh download
    with lio.local_copy(url, suffix=".mp4", cache_dir=cache) as p3:
        assert p3 != p1 and Path(p3).read_bytes() == b"B" * 2000
    assert len(calls) == 2 and _leftovers(cache) == []
    # without a cache the download is temporary
    with lio.local_copy(url) as tmp:
        assert Path(tmp).read_bytes() == b"B" * 2000
    assert not Path(tmp).exists()


def test_cache_trim_evicts_least_recently_used_but_spares_recent_files(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    old = time.time() - 3600
    for i, name in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        p = cache / name
        p.write_bytes(b"x" * 100)
        os.utime(p, (old + i, old + i))  # a is the least recently used
    (cache / "fresh.mp4").write_bytes(b"x" * 100)  # used just now: spared
    removed = lio.trim_cache(cache, max_bytes=250)
    assert removed == ["a.mp4", "b.mp4"]
    assert sorted(p.name for p in cache.iterdir()) == ["c.mp4", "fresh.mp4"]


@pytest.mark.parametrize("rel", ["a b.mp4", "a_b.mp4", "dir/ünïcödé 视频.mkv", "q'\"uote.mp4", "$(rm -rf ~).mp4",
                                 "../escape.mp4", "x" * 300 + ".mp4", "...mp4"])
def test_partition_keys_are_safe_stable_and_unique(rel):
    key = partition_key_for(rel)
    assert is_valid_key(key) and key == partition_key_for(rel)
    assert all(c.isalnum() or c in "_-" for c in key) and key.isascii() and len(key) <= 57


def test_partition_keys_do_not_collide_on_similar_names():
    names = ["a b.mp4", "a_b.mp4", "A B.mp4", "a-b.mp4", "dir/a b.mp4"]
    assert len({partition_key_for(n) for n in names}) == len(names)
