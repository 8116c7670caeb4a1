"""Source and lake on S3 (a real moto_server on a loopback port, reached through s3fs)."""

from __future__ import annotations

import json
import os

import pytest
from dagster import DagsterInstance

from longvila.keys import partition_key_for

pytestmark = [pytest.mark.s3, pytest.mark.slow]

BUCKET = "longvila-test"
CREDS = dict(aws_access_key_id="testing", aws_secret_access_key="testing", aws_region="us-east-1")


@pytest.fixture()
def s3(moto_endpoint, monkeypatch):
    import boto3

    # only for the boto3 client below and anything reading the environment; the lake gets them explicitly
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield client
    objs = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for o in objs:
        client.delete_object(Bucket=BUCKET, Key=o["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


def test_sensor_and_assets_on_s3(s3, moto_endpoint, small_video_cache, helpers):
    s3.upload_file(str(small_video_cache[0]), BUCKET, "raw/a.mp4")
    s3.upload_file(str(small_video_cache[1]), BUCKET, "raw/dir/b c.mp4")
    s3.put_object(Bucket=BUCKET, Key="raw/bad.mp4", Body=b"not a video at all\n" * 10)
    s3.put_object(Bucket=BUCKET, Key="raw/notes.txt", Body=b"ignored")

    defs, lake = helpers.curation_defs(f"s3://{BUCKET}/raw", f"s3://{BUCKET}/lake",
                                       s3_endpoint_url=moto_endpoint, **CREDS)
    inst = DagsterInstance.ephemeral()
    ka, kb, kbad = (partition_key_for(r) for r in ("a.mp4", "dir/b c.mp4", "bad.mp4"))

    r1 = helpers.tick(inst, lake)
    assert sorted(r.partition_key for r in r1.run_requests) == sorted([ka, kb, kbad])
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key="lake/manifest/videos.json")["Body"].read())
    assert manifest["videos"][kb]["url"] == f"s3://{BUCKET}/raw/dir/b c.mp4"

    outcomes = {k: helpers.run_partition(defs, inst, k) for k in (ka, kb, kbad)}
    assert outcomes[ka].success and outcomes[kb].success
    # each video was downloaded once into the local cache and shared by probe, shots and both frame layers
    cached = sorted(n for n in os.listdir(os.environ["LONGVILA_CACHE_DIR"]) if n.endswith(".mp4"))
    assert len(cached) == 3, cached  # a, b and the bad one (downloaded once, then rejected by the probe)
    assert not outcomes[kbad].success
    assert "bad.mp4" in outcomes[kbad].failures[0]["description"]
    assert outcomes[kbad].failures[0]["metadata"]["url"] == f"s3://{BUCKET}/raw/bad.mp4"

    written = _keys(s3, "lake/")
    for k in (ka, kb):
        assert {f"lake/probe/{k}.json", f"lake/shots/{k}.parquet", f"lake/clips/{k}.parquet",
                f"lake/clip_frames/{k}.parquet", f"lake/video_frames/{k}.parquet"} <= written
    assert not [w for w in written if kbad in w]
    probe = json.loads(s3.get_object(Bucket=BUCKET, Key=f"lake/probe/{ka}.json")["Body"].read())
    assert probe["path"] == f"s3://{BUCKET}/raw/a.mp4" and probe["frame_count"] == 60

    # a changed object (new ETag, new bytes) is detected; the others are not touched
    s3.upload_file(str(small_video_cache[2]), BUCKET, "raw/a.mp4")
    r2 = helpers.tick(inst, lake, r1.cursor)
    assert [r.partition_key for r in r2.run_requests] == [ka]
    # a deleted object is marked removed (its partition and history stay)
    s3.delete_object(Bucket=BUCKET, Key="raw/bad.mp4")
    r3 = helpers.tick(inst, lake, r2.cursor)
    assert list(r3.run_requests) == []
    assert lake.read_manifest()["videos"][kbad]["status"] == "removed" and kbad not in lake.present_keys()
