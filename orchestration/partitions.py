"""Partitions shared by every per-video asset.

One dynamic partition per raw video. The key is `longvila.keys.partition_key_for(relative path)`
(relative to the source root), so a video that changes keeps its partition and gets a new data
version instead. Partitions are added by the new-video sensor (`orchestration.sensors`) and by
`longvila demo`; both go through `orchestration.sensors.register_videos` / `scan_source`.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

VIDEOS_PARTITIONS_NAME = "videos"

videos = DynamicPartitionsDefinition(name=VIDEOS_PARTITIONS_NAME)

__all__ = ["videos", "VIDEOS_PARTITIONS_NAME"]
