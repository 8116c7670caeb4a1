"""Lineage audit: from an asset's latest materialisation down to the raw videos it was trained on.

    longvila lineage stage5_long_sft                 # markdown report
    longvila lineage stage5_long_sft --json          # machine-readable
    longvila lineage stage5_long_sft --video KEY     # did video KEY feed it? exit 0 yes / 1 no

The walk uses only the Dagster instance's event log (plus the dataset manifests as a cross-check).
Every materialisation carries ``dagster/input_data_version/<upstream>`` and
``dagster/input_event_pointer/<upstream>`` tags. For an unpartitioned upstream the pointer is the
storage id of the exact upstream materialisation that was consumed. For a partitioned upstream the
pointer is the newest materialisation of *any* partition at the time, and the version tag is
``sha256("".join(partition versions in key order))``: the walk reconstructs the partition versions
as of the pointer (the newest materialisation of each partition with storage id <= pointer; only the
node's own partition for a same-partition dependency), checks that they hash to the recorded tag
(``verified``), and otherwise falls back to the versions recorded in the dataset manifest
(``manifest``), reporting anything it cannot resolve.

Result: every node (asset, partition, data version, code version, run), the raw videos (key + sha256
content hash), the dataset manifests, the stage checkpoints' hashes and the code version of every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import deque
from typing import Any, Optional

DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
IN_VERSION = "dagster/input_data_version/"
IN_POINTER = "dagster/input_event_pointer/"
RAW_VIDEO = "raw_video"
STAGES = ("stage1_alignment", "stage2_pretraining", "stage3_short_sft", "stage4_context_extension", "stage5_long_sft")


def _key(s: str):
    from dagster import AssetKey

    return AssetKey.from_user_string(s)


def _records(instance, asset: str, partition: Optional[str] = None, before: Optional[int] = None,
             storage_ids: Optional[list[int]] = None, limit: int = 1):
    from dagster import AssetRecordsFilter

    f = AssetRecordsFilter(asset_key=_key(asset), asset_partitions=[partition] if partition is not None else None,
                           before_storage_id=before, storage_ids=storage_ids)
    return list(instance.fetch_materializations(f, limit=limit).records)


def _tags(rec) -> dict:
    return dict(rec.asset_materialization.tags or {})


def _md_value(v) -> Any:
    return getattr(v, "value", v)


def _node(rec, asset: str) -> dict:
    m = rec.asset_materialization
    tags = _tags(rec)
    md = {k: _md_value(v) for k, v in (m.metadata or {}).items()}
    return {
        "asset": asset, "partition": m.partition, "data_version": tags.get(DATA_VERSION_TAG),
        "code_version": tags.get(CODE_VERSION_TAG), "run_id": rec.run_id, "storage_id": rec.storage_id,
        "timestamp": rec.timestamp, "upstream": [], "_metadata": md,
    }


def _hash_versions(versions_by_partition: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(bytearray("".join(v for _, v in sorted(versions_by_partition.items())), "utf8"))
    return h.hexdigest()


def _manifest_versions(node: dict, upstream: str) -> dict[str, str]:
    """Partition versions of `upstream` as recorded by a dataset manifest in the node's metadata or on disk."""
    md = node["_metadata"]
    out: dict[str, str] = {}
    man = md.get("manifest")
    if isinstance(man, str):
        try:
            man = json.loads(man)
        except ValueError:
            man = None
    if man is None and md.get("path"):
        try:
            from longvila import io as lio

            man = lio.read_json(lio.join(str(md["path"]), "manifest.json"))
        except Exception:  # noqa: BLE001 - a manifest is optional evidence
            man = None
    if not isinstance(man, dict):
        return out
    for inp in man.get("inputs", []) or []:
        v = inp.get(f"{upstream}_data_version")
        if inp.get("video_key") and v:
            out[inp["video_key"]] = v
    for k, v in (man.get("videos") or {}).items():  # long-video SFT manifest: instruction versions
        if upstream == "video_instructions" and isinstance(v, dict) and v.get("data_version"):
            out[k] = v["data_version"]
    return out


def _partition_record_with_version(instance, asset: str, partition: str, version: str, before: Optional[int]):
    for rec in _records(instance, asset, partition, before=before, limit=50):
        if _tags(rec).get(DATA_VERSION_TAG) == version:
            return rec
    return None


def lineage(instance, asset: str, partition: Optional[str] = None) -> dict:
    """Walk upstream from the latest materialisation of `asset` (and `partition`); returns the report dict."""
    recs = _records(instance, asset, partition)
    if not recs:
        raise LookupError(f"{asset}{'[' + partition + ']' if partition else ''}: never materialised")
    start = _node(recs[0], asset)
    nodes: dict[int, dict] = {start["storage_id"]: start}
    unresolved: list[str] = []
    queue = deque([start])
    while queue:
        node = queue.popleft()
        rec_tags = _tags(_records(instance, node["asset"], storage_ids=[node["storage_id"]])[0])
        ups = sorted({k[len(IN_VERSION):] for k in rec_tags if k.startswith(IN_VERSION)})
        for up in ups:
            tag_version = rec_tags.get(IN_VERSION + up)
            ptr_s = rec_tags.get(IN_POINTER + up, "NULL")
            if ptr_s in ("NULL", "", None):
                unresolved.append(f"{node['asset']} <- {up}: never materialised when {node['asset']} ran")
                node["upstream"].append({"asset": up, "data_version": tag_version, "how": "missing"})
                continue
            ptr = int(ptr_s)
            pointed = _records(instance, up, storage_ids=[ptr])
            if not pointed:
                unresolved.append(f"{node['asset']} <- {up}: event {ptr} no longer in the event log")
                continue
            pointed = pointed[0]
            children: list = []
            how = None
            if pointed.asset_materialization.partition is None:
                how = "exact" if _tags(pointed).get(DATA_VERSION_TAG) == tag_version else "pointer"
                children = [pointed]
            else:
                # partitioned upstream: reconstruct the partition versions as of the pointer
                if node["partition"] is not None and _records(instance, up, node["partition"], before=ptr + 1):
                    parts = [node["partition"]]
                else:
                    parts = sorted(instance.get_materialized_partitions(_key(up), before_cursor=ptr + 1))
                at = {}
                for p in parts:
                    r = _records(instance, up, p, before=ptr + 1)
                    if r:
                        at[p] = r[0]
                versions = {p: _tags(r).get(DATA_VERSION_TAG) for p, r in at.items()}
                if _hash_versions(versions) == tag_version:
                    how, children = "verified", list(at.values())
                else:
                    man = _manifest_versions(node, up)
                    if man:
                        how = "manifest"
                        for p, v in sorted(man.items()):
                            r = _partition_record_with_version(instance, up, p, v, ptr + 1)
                            if r is None:
                                unresolved.append(f"{node['asset']} <- {up}[{p}]: version {v[:12]} not in the event log")
                            else:
                                children.append(r)
                    else:
                        how, children = "latest-unverified", list(at.values())
                        unresolved.append(f"{node['asset']} <- {up}: {len(at)} partitions do not hash to the recorded "
                                          "input version and no manifest records them")
            node["upstream"].append({"asset": up, "data_version": tag_version, "how": how,
                                     "partitions": sorted(c.asset_materialization.partition for c in children
                                                          if c.asset_materialization.partition is not None)})
            for c in children:
                if c.storage_id not in nodes:
                    n = _node(c, up)
                    nodes[c.storage_id] = n
                    queue.append(n)
    return _summarise(asset, start, list(nodes.values()), unresolved)


def _summarise(asset: str, start: dict, nodes: list[dict], unresolved: list[str]) -> dict:
    raw = [n for n in nodes if n["asset"] == RAW_VIDEO]
    if not raw:  # no asset named raw_video: partitioned roots stand for the raw inputs
        raw = [n for n in nodes if not n["upstream"] and n["partition"] is not None]
    raw_videos = sorted(({"video_key": n["partition"], "sha256": n["data_version"],
                          "path": n["_metadata"].get("path") or n["_metadata"].get("source")} for n in raw),
                        key=lambda d: d["video_key"])
    datasets, checkpoints = [], []
    for n in nodes:
        md = n["_metadata"]
        if n["asset"].endswith("_dataset"):
            man = md.get("manifest")
            man = json.loads(man) if isinstance(man, str) else man
            if not isinstance(man, dict) and md.get("path"):
                try:
                    from longvila import io as lio

                    disk = lio.read_json(lio.join(str(md["path"]), "manifest.json"))
                    man = {"video_keys": sorted(disk.get("videos") or {})} if "videos" in disk else disk
                except Exception:  # noqa: BLE001 - the manifest is optional evidence
                    man = None
            datasets.append({"asset": n["asset"], "data_version": n["data_version"], "path": md.get("path"),
                             "num_samples": md.get("num_samples", md.get("num_records")),
                             "video_keys": (man or {}).get("video_keys") if isinstance(man, dict) else None})
        if n["asset"] in STAGES:
            checkpoints.append({"asset": n["asset"], "sha256": n["data_version"], "path": md.get("checkpoint"),
                                "final_loss": md.get("final_loss"), "code_version": n["code_version"],
                                "dataset_versions": md.get("dataset_versions")})
    checkpoints.sort(key=lambda d: STAGES.index(d["asset"]))
    code_versions: dict[str, list[str]] = {}
    for n in nodes:
        code_versions.setdefault(n["asset"], [])
        if n["code_version"] and n["code_version"] not in code_versions[n["asset"]]:
            code_versions[n["asset"]].append(n["code_version"])
    clean = [{k: v for k, v in n.items() if k != "_metadata"} for n in sorted(nodes, key=lambda n: -n["storage_id"])]
    return {"asset": asset, "partition": start["partition"], "data_version": start["data_version"],
            "raw_videos": raw_videos, "datasets": sorted(datasets, key=lambda d: d["asset"]),
            "checkpoints": checkpoints, "code_versions": code_versions, "nodes": clean, "unresolved": unresolved}


def fed_by(report: dict, video_key: str) -> bool:
    return any(v["video_key"] == video_key for v in report["raw_videos"])


def _versions(versions) -> str:
    if not versions:
        return "(generated)" if versions == [] else "(not recorded)"
    return ", ".join(f"`{str(v)[:16]}`" for v in versions)


def to_markdown(rep: dict) -> str:
    lines = [f"# Lineage of `{rep['asset']}`" + (f" [{rep['partition']}]" if rep["partition"] else ""),
             f"data version `{rep['data_version']}`; {len(rep['nodes'])} materialisations walked.", ""]
    lines += ["## Raw videos", "| video key | sha256 |", "|---|---|"]
    lines += [f"| {v['video_key']} | `{v['sha256']}` |" for v in rep["raw_videos"]] or ["| (none) | |"]
    lines += ["", "## Datasets", "| asset | data version | samples | videos |", "|---|---|---|---|"]
    lines += [f"| {d['asset']} | `{(d['data_version'] or '')[:16]}` | {d['num_samples']} | "
              f"{len(d['video_keys']) if d['video_keys'] is not None else '-'} |" for d in rep["datasets"]]
    lines += ["", "## Stage checkpoints",
              "| stage | sha256 | trained on dataset versions | final loss | code version |", "|---|---|---|---|---|"]
    lines += [f"| {c['asset']} | `{c['sha256']}` | {_versions(c.get('dataset_versions'))} | {c['final_loss']} | "
              f"`{c['code_version']}` |" for c in rep["checkpoints"]]
    lines += ["", "## Code versions", "| asset | code version(s) |", "|---|---|"]
    lines += [f"| {a} | {', '.join('`' + c + '`' for c in cs)} |" for a, cs in sorted(rep["code_versions"].items())]
    if rep["unresolved"]:
        lines += ["", "## Unresolved", *[f"- {u}" for u in rep["unresolved"]]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    p = subparsers.add_parser("lineage", help="audit which raw videos, datasets and code produced an asset",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("asset_key", help="asset key, e.g. stage5_long_sft")
    p.add_argument("--partition", default=None, help="partition of a partitioned asset")
    p.add_argument("--video", default=None, help="answer whether this video key fed the asset (exit 0 yes / 1 no)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from dagster import DagsterInstance

    from longvila.settings import ensure_dagster_home

    ensure_dagster_home()
    instance = DagsterInstance.get()
    try:
        rep = lineage(instance, args.asset_key, args.partition)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.video:
        yes = fed_by(rep, args.video)
        sentence = (f"Yes: video {args.video} fed {args.asset_key} "
                    f"(raw sha256 {next(v['sha256'] for v in rep['raw_videos'] if v['video_key'] == args.video)})."
                    if yes else f"No: video {args.video} did not feed {args.asset_key} "
                                f"({len(rep['raw_videos'])} raw videos did).")
        if args.json:
            print(json.dumps({"video": args.video, "fed": yes, "sentence": sentence}))
        else:
            print(sentence)
        return 0 if yes else 1
    print(json.dumps(rep, indent=2, default=str) if args.json else to_markdown(rep))
    return 0
