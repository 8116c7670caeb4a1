"""The content-addressed video cache: steps read exactly the bytes raw_video hashed; eviction spares
copies in use."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import fsspec
import pytest

from longvila import cache
from longvila.cache import SourceChangedError


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _age(p: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(p, (t, t))


def test_steps_read_the_hashed_bytes_even_after_the_source_is_swapped(tmp_path):
    src = tmp_path / "v.mp4"
    src.write_bytes(b"A" * 5000)
    c = tmp_path / "cache"
    snap = cache.snapshot(str(src), suffix=".mp4", cache_dir=c, max_bytes=10**9)
    assert snap.sha256 == _sha(b"A" * 5000) and snap.size_bytes == 5000
    src.write_bytes(b"B" * 5000)  # replaced after raw_video hashed it
    with cache.pinned_copy(str(src), snap.sha256, suffix=".mp4", cache_dir=c, max_bytes=10**9) as p:
        assert Path(p).read_bytes() == b"A" * 5000 and p.endswith(".mp4")
    # the copy was evicted (or this is another machine): the step must fail, naming the mismatch
    for f in c.glob("*.mp4"):
        f.unlink()
    with pytest.raises(SourceChangedError) as e:
        with cache.pinned_copy(str(src), snap.sha256, suffix=".mp4", cache_dir=c, max_bytes=10**9):
            pytest.fail("a step got bytes that raw_video never hashed")
    assert snap.sha256 in str(e.value) and _sha(b"B" * 5000) in str(e.value) and str(src) in str(e.value)
    assert [f.name for f in c.iterdir() if f.name != ".lock"] == []  # the wrong copy is not kept


def test_evicted_copy_is_fetched_again_and_verified(tmp_path):
    src = tmp_path / "v.mkv"
    src.write_bytes(b"C" * 3000)
    c = tmp_path / "cache"
    sha = cache.snapshot(str(src), suffix=".mkv", cache_dir=c, max_bytes=10**9).sha256
    (c / f"{sha}.mkv").unlink()
    with cache.pinned_copy(str(src), sha, suffix=".mkv", cache_dir=c, max_bytes=10**9) as p:
        assert Path(p) == c / f"{sha}.mkv" and Path(p).read_bytes() == b"C" * 3000


def test_without_a_cache_each_step_makes_a_verified_temporary_copy(tmp_path):
    src = tmp_path / "v.mp4"
    src.write_bytes(b"D" * 100)
    snap = cache.snapshot(str(src), max_bytes=0)
    with cache.pinned_copy(str(src), snap.sha256, suffix=".mp4", max_bytes=0) as p:
        assert p != str(src) and Path(p).read_bytes() == b"D" * 100
    assert not Path(p).exists()
    src.write_bytes(b"E" * 100)
    with pytest.raises(SourceChangedError):
        with cache.pinned_copy(str(src), snap.sha256, max_bytes=0):
            pass


def test_remote_source_is_downloaded_once_per_content(tmp_path, monkeypatch):
    fs = fsspec.filesystem("memory")
    fs.pipe("/videos/a.mp4", b"A" * 1000)
    url = "memory://videos/a.mp4"
    opened = []
    real_open = type(fs)._open

    def counting_open(self, path, *a, **k):
        opened.append(path)
        return real_open(self, path, *a, **k)

    monkeypatch.setattr(type(fs), "_open", counting_open)
    c = tmp_path / "cache"
    sha = cache.snapshot(url, suffix=".mp4", cache_dir=c, max_bytes=10**9).sha256
    for _ in range(3):  # probe, shots, frames...
        with cache.pinned_copy(url, sha, suffix=".mp4", cache_dir=c, max_bytes=10**9) as p:
            assert Path(p).read_bytes() == b"A" * 1000
    assert len(opened) == 1  # one read of the source: raw_video's


def test_eviction_never_removes_a_copy_in_use(tmp_path):
    c = tmp_path / "cache"
    srcs = []
    for ch in b"abc":
        s = tmp_path / f"{chr(ch)}.mp4"
        s.write_bytes(bytes([ch]) * 100)
        srcs.append((s, cache.snapshot(str(s), suffix=".mp4", cache_dir=c, max_bytes=10**9).sha256))
    for i, (_, sha) in enumerate(srcs):
        _age(c / f"{sha}.mp4", 3600 - i)  # a is the least recently used
    with cache.pinned_copy(str(srcs[0][0]), srcs[0][1], suffix=".mp4", cache_dir=c, max_bytes=10**9) as held:
        _age(Path(held), 7200)  # least recently used AND in use by a long step
        removed = cache.trim_cache(c, max_bytes=150)
        assert removed == [f"{srcs[1][1]}.mp4", f"{srcs[2][1]}.mp4"]
        assert Path(held).read_bytes() == b"a" * 100
    assert cache.trim_cache(c, max_bytes=50) == [f"{srcs[0][1]}.mp4"]  # released: now it can go
