"""The shared foundation: atomic writes, hashing, the remote-download cache and partition keys."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from longvila import io as lio
from longvila.keys import is_valid_key, partition_key_for

REPO = Path(__file__).resolve().parents[2]


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


_PUBLISHER = """
import sys
from longvila import io as lio
final, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    with lio.atomic_dir(final) as d:
        (d / "a").write_text(f"{tag}{i}")
        (d / "b").write_text(f"{tag}{i}")
"""


def _publishers(final: Path, n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _PUBLISHER, str(final), tag, str(n)], cwd=REPO,
                             stderr=subprocess.PIPE) for tag in ("x", "y")]


def test_atomic_dir_concurrent_publishers_never_fail_and_target_never_vanishes(tmp_path):
    final = tmp_path / "ckpt"
    with lio.atomic_dir(final) as d:
        (d / "a").write_text("first")
        (d / "b").write_text("first")
    procs = _publishers(final, 150)
    missing = reads = 0
    while any(p.poll() is None for p in procs):
        reads += 1
        try:
            assert (final / "a").read_text()  # a complete folder: never empty, never missing
        except FileNotFoundError:
            missing += 1
    errors = [p.stderr.read().decode()[-800:] for p in procs if p.wait() != 0]
    assert errors == [] and missing == 0, (errors, missing, reads)
    assert (final / "a").read_text() in ("x149", "y149")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # nothing left behind


def test_atomic_dir_without_renameat2_serialises_writers(tmp_path, monkeypatch):
    import threading

    def unsupported(*a):
        raise OSError(errno.ENOSYS, "no renameat2 here")

    monkeypatch.setattr(lio, "_renameat2", unsupported)
    final = tmp_path / "out"
    errors = []

    def publish(tag):
        try:
            for i in range(40):
                with lio.atomic_dir(final) as d:
                    (d / "a").write_text(f"{tag}{i}")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(t,)) for t in "xyz"]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == [] and (final / "a").read_text() in ("x39", "y39", "z39")
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


_KILLED_WRITER = """
import os, sys, time
from longvila import io as lio
with lio.atomic_write(sys.argv[1]) as f:
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_stale_temps_of_killed_writers_are_swept_but_live_writers_are_not(tmp_path):
    def writer(name):
        p = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / name)], cwd=REPO,
                             stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"writing\n"
        return p

    killed, live = writer("killed.json"), writer("live.json")
    try:
        killed.kill()
        killed.wait()
        temps = sorted(p.name for p in tmp_path.iterdir())
        assert len(temps) == 2 and all(lio.is_temp_name(t) for t in temps)
        assert lio.clean_stale_temps(tmp_path, older_than_s=3600) == []  # both too young
        removed = lio.clean_stale_temps(tmp_path, older_than_s=0)
        assert len(removed) == 1 and removed[0].startswith(".killed.json.tmp-")
        assert [p.name for p in tmp_path.iterdir()] == [t for t in temps if t.startswith(".live.json")]
    finally:
        live.kill()
        live.wait()
    (tmp_path / "plain.txt").write_text("not a temp")
    os.utime(tmp_path / "plain.txt", (0, 0))
    lio.clean_stale_temps(tmp_path, older_than_s=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def test_first_write_into_a_folder_sweeps_old_leftovers(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGVILA_STALE_TEMP_S", "60")
    old = tmp_path / ".x.parquet.tmp-0123456789ab"
    old.write_bytes(b"left by a killed run")
    os.utime(old, (time.time() - 120, time.time() - 120))
    young = tmp_path / ".y.parquet.tmp-0123456789ab"
    young.write_bytes(b"maybe a writer without flock, just started")
    lio.write_json(tmp_path / "z.json", {"ok": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == [young.name, "z.json"]


def test_local_copy_of_remote_is_temporary():
    fs = fsspec.filesystem("memory")
    fs.pipe("/videos/t.mp4", b"T" * 100)
    with lio.local_copy("memory://videos/t.mp4", suffix=".mp4") as tmp:
        assert Path(tmp).read_bytes() == b"T" * 100 and tmp.endswith(".mp4")
    assert not Path(tmp).exists()
    with lio.local_copy("/some/local/file.mp4") as p:
        assert p == "/some/local/file.mp4"


@pytest.mark.parametrize("rel", ["a b.mp4", "a_b.mp4", "dir/ünïcödé 视频.mkv", "q'\"uote.mp4", "$(rm -rf ~).mp4",
                                 "../escape.mp4", "x" * 300 + ".mp4", "...mp4"])
def test_partition_keys_are_safe_stable_and_unique(rel):
    key = partition_key_for(rel)
    assert is_valid_key(key) and key == partition_key_for(rel)
    assert all(c.isalnum() or c in "_-" for c in key) and key.isascii() and len(key) <= 57


def test_partition_keys_do_not_collide_on_similar_names():
    names = ["a b.mp4", "a_b.mp4", "A B.mp4", "a-b.mp4", "dir/a b.mp4"]
    assert len({partition_key_for(n) for n in names}) == len(names)
