"""Lineage audit: from an asset's latest materialisation down to the raw videos it was trained on.

    longvila lineage stage5_long_sft                 # markdown report
    longvila lineage stage5_long_sft --json          # machine-readable
    longvila lineage stage5_long_sft --video KEY     # did video KEY feed it? exit 0 yes / 1 no
    longvila lineage stage5_long_sft --verify        # also check every per-video row against the event log

Fast path (bounded queries, whatever the number of videos): the walk follows the unpartitioned chain
(checkpoints, datasets: one query per node) through the ``dagster/input_event_pointer`` tags. A dataset that
recorded a lineage table when it was built (``lineage_table`` + ``lineage_sha256`` in its metadata, see
`longvila.lineage_table`) answers for its per-video inputs from that table: video keys, raw sha256, the
version of each layer file read and the code versions of the per-video assets (``how = "lineage-table"``).
``verify=True`` then checks each row against the event log: the newest materialisation of each
partition before the dataset's own event must carry the recorded version (paged queries, ~N/5,000 per
asset; `verify_table`).

Datasets without a table (built by older code) fall back to the event-log walk below.
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
SHARD_ASSET = "curated_shard"  # shard mode's per-shard curation (assets.shards)
MARKDOWN_VIDEOS = 200  # raw-video rows printed in the markdown report (all are in the JSON)
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
        "timestamp": rec.timestamp, "upstream": [], "_metadata": md, "_tags": tags,
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


def _expand_partitioned(instance, node: dict, up: str, ptr: int, tag_version, unresolved: list[str]):
    """(how, records) of a partitioned upstream `up` of `node`, reconstructed from the event log as of `ptr`."""
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
        return "verified", list(at.values())
    man = _manifest_versions(node, up)
    if not man:
        unresolved.append(f"{node['asset']} <- {up}: {len(at)} partitions do not hash to the recorded "
                          "input version and no manifest records them")
        return "latest-unverified", list(at.values())
    children = []
    for p, v in sorted(man.items()):
        r = _partition_record_with_version(instance, up, p, v, ptr + 1)
        if r is None:
            unresolved.append(f"{node['asset']} <- {up}[{p}]: version {v[:12]} not in the event log")
        else:
            children.append(r)
    return "manifest", children


def _lineage_table(node: dict, unresolved: list[str], video: Optional[str] = None):
    """The lineage table a dataset node recorded (None when it has none or it cannot be read); with `video`,
    only that video's rows."""
    md = node["_metadata"]
    if not md.get("lineage_table"):
        return None
    from longvila.errors import InputError
    from longvila.lineage_table import read_table

    try:
        table = read_table(str(md["lineage_table"]), md.get("lineage_sha256"))
    except InputError as e:
        unresolved.append(f"{node['asset']}: {e}")
        return None
    if video is None:
        return table
    import pyarrow.compute as pc

    return table.filter(pc.equal(table.column("video_key"), video))


def _differences(node: dict, asset: str, recorded: dict, actual: dict, source: str) -> list[str]:
    bad = [k for k, v in recorded.items() if actual.get(k) != v]
    out = [f"{node['asset']}: {asset}[{k}] recorded {str(recorded[k])[:12]}, {source} has {str(actual.get(k))[:12]}"
           for k in bad[:20]]
    if len(bad) > 20:
        out.append(f"{node['asset']}: {asset}: {len(bad) - 20} more rows differ from the {source}")
    return out


def _shard_rows(instance, node: dict, problems: list[str]) -> dict[str, dict]:
    """Shard mode: {video: row} of the shard manifests, each manifest checked against curated_shard's data
    version as of the dataset (the shards' event-log records)."""
    from assets.common import versions_as_of
    from curation.scaleout import read_shard_manifest, shard_version

    # the table is <storage>/datasets/<name>/lineage.parquet (longvila.layout.dataset_dir)
    storage = str(node["_metadata"]["lineage_table"]).rsplit("/datasets/", 1)[0]
    rows: dict[str, dict] = {}
    for shard, version in sorted(versions_as_of(instance, _key(SHARD_ASSET), node["storage_id"]).items()):
        manifest = read_shard_manifest(storage, shard)
        if shard_version(manifest) != version:
            problems.append(f"{node['asset']}: shards/{shard}/manifest.json is not the one {SHARD_ASSET}[{shard}] "
                            f"recorded ({version[:12]})")
        rows.update(manifest["videos"])
    return rows


def verify_table(instance, node: dict, table) -> list[str]:
    """Rows of `table` whose recorded versions are not what the event log holds as of the dataset's event:
    for each column asset (and raw_video), the newest materialisation of the partition before it. In shard
    mode (the dataset read ``curated_shard``), the rows of the shard manifests that the event log vouches for."""
    from assets.common import versions_as_of
    from longvila.lineage_table import KEY, RAW

    keys = table.column(KEY).to_pylist()
    problems: list[str] = []
    shard_rows = _shard_rows(instance, node, problems) if IN_VERSION + SHARD_ASSET in node["_all_tags"] else None
    for col in [c for c in table.column_names if c != KEY]:
        asset = RAW_VIDEO if col == RAW else col
        recorded = dict(zip(keys, table.column(col).to_pylist()))
        if shard_rows is None:
            actual, source = versions_as_of(instance, _key(asset), node["storage_id"]), "event log"
        else:
            field = (lambda r: r.get("raw_sha256")) if col == RAW else (lambda r, c=col: r.get("outputs", {}).get(c))
            actual, source = {k: field(r) for k, r in shard_rows.items()}, "shard manifests"
        problems += _differences(node, asset, recorded, actual, source)
    return problems


def lineage(instance, asset: str, partition: Optional[str] = None, verify: bool = False,
            video: Optional[str] = None) -> dict:
    """Walk upstream from the latest materialisation of `asset` (and `partition`); returns the report dict.
    With `video`, the lineage tables contribute only that video's rows (what ``--video`` needs)."""
    recs = _records(instance, asset, partition)
    if not recs:
        raise LookupError(f"{asset}{'[' + partition + ']' if partition else ''}: never materialised")
    start = _node(recs[0], asset)
    nodes: dict[int, dict] = {start["storage_id"]: start}
    unresolved: list[str] = []
    queue = deque([start])
    while queue:
        node = queue.popleft()
        rec_tags = node.pop("_tags")
        node["_all_tags"] = rec_tags
        table = _lineage_table(node, unresolved, video)
        if table is not None:
            node["_table"] = table
            if table.column("raw_sha256").null_count:
                unresolved.append(f"{node['asset']}: {table.column('raw_sha256').null_count} videos have no "
                                  "recorded raw sha256 (no probe/<key>.json when the dataset was built)")
            if verify:
                unresolved += verify_table(instance, node, table)
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
            if pointed.asset_materialization.partition is None:
                how = "exact" if _tags(pointed).get(DATA_VERSION_TAG) == tag_version else "pointer"
                children = [pointed]
            elif table is not None:
                node["upstream"].append({"asset": up, "data_version": tag_version, "how": "lineage-table",
                                         "videos": table.num_rows})
                continue
            else:
                how, children = _expand_partitioned(instance, node, up, ptr, tag_version, unresolved)
            node["upstream"].append({"asset": up, "data_version": tag_version, "how": how,
                                     "partitions": sorted(c.asset_materialization.partition for c in children
                                                          if c.asset_materialization.partition is not None)})
            for c in children:
                if c.storage_id not in nodes:
                    n = _node(c, up)
                    nodes[c.storage_id] = n
                    queue.append(n)
    return _summarise(asset, start, list(nodes.values()), unresolved)


def _raw_videos(nodes: list[dict]) -> list[dict]:
    """Raw videos: the walked raw_video nodes plus the rows of the lineage tables, one per (key, sha256)."""
    raw = [n for n in nodes if n["asset"] == RAW_VIDEO]
    if not raw and not any("_table" in n for n in nodes):  # partitioned roots stand for the raw inputs
        raw = [n for n in nodes if not n["upstream"] and n["partition"] is not None]
    found = {(n["partition"], n["data_version"]): n["_metadata"].get("path") or n["_metadata"].get("source")
             for n in raw}
    from longvila.lineage_table import KEY, RAW

    for n in nodes:
        if "_table" in n:
            t = n["_table"]
            for key, sha in zip(t.column(KEY).to_pylist(), t.column(RAW).to_pylist()):
                found.setdefault((key, sha), None)
    order = sorted(found, key=lambda ks: (ks[0], ks[1] or ""))
    return [{"video_key": k, "sha256": sha, "path": found[(k, sha)]} for k, sha in order]


def _dataset_video_keys(n: dict) -> Optional[list[str]]:
    """The video keys a dataset node consumed: its lineage table, else its manifest (metadata or on disk)."""
    if "_table" in n:
        from longvila.lineage_table import KEY

        return n["_table"].column(KEY).to_pylist()
    md = n["_metadata"]
    man = md.get("manifest")
    man = json.loads(man) if isinstance(man, str) else man
    if not isinstance(man, dict) and md.get("path"):
        try:
            from longvila import io as lio

            disk = lio.read_json(lio.join(str(md["path"]), "manifest.json"))
            man = {"video_keys": sorted(disk.get("videos") or {})} if "videos" in disk else disk
        except Exception:  # noqa: BLE001 - the manifest is optional evidence
            man = None
    return man.get("video_keys") if isinstance(man, dict) else None


def _code_versions(nodes: list[dict]) -> dict[str, list[str]]:
    """asset -> code versions seen: walked nodes, plus the per-video code versions the tables recorded."""
    from longvila.lineage_table import code_versions

    out: dict[str, list[str]] = {}
    pairs = [(n["asset"], n["code_version"]) for n in nodes]
    pairs += [pair for n in nodes if "_table" in n for pair in sorted(code_versions(n["_table"]).items())]
    for a, cv in pairs:
        out.setdefault(a, [])
        if cv and cv not in out[a]:
            out[a].append(cv)
    return out


def _summarise(asset: str, start: dict, nodes: list[dict], unresolved: list[str]) -> dict:
    datasets, checkpoints = [], []
    for n in nodes:
        md = n["_metadata"]
        if n["asset"].endswith("_dataset"):
            datasets.append({"asset": n["asset"], "data_version": n["data_version"], "path": md.get("path"),
                             "num_samples": md.get("num_samples", md.get("num_records")),
                             "video_keys": _dataset_video_keys(n)})
        if n["asset"] in STAGES:
            checkpoints.append({"asset": n["asset"], "sha256": n["data_version"], "path": md.get("checkpoint"),
                                "final_loss": md.get("final_loss"), "code_version": n["code_version"],
                                "dataset_versions": md.get("dataset_versions")})
    checkpoints.sort(key=lambda d: STAGES.index(d["asset"]))
    clean = [{k: v for k, v in n.items() if not k.startswith("_")}
             for n in sorted(nodes, key=lambda n: -n["storage_id"])]
    return {"asset": asset, "partition": start["partition"], "data_version": start["data_version"],
            "raw_videos": _raw_videos(nodes), "datasets": sorted(datasets, key=lambda d: d["asset"]),
            "checkpoints": checkpoints, "code_versions": _code_versions(nodes), "nodes": clean,
            "unresolved": unresolved}


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
    shown = rep["raw_videos"][:MARKDOWN_VIDEOS]
    lines += [f"| {v['video_key']} | `{v['sha256']}` |" for v in shown] or ["| (none) | |"]
    if len(rep["raw_videos"]) > len(shown):
        lines.append(f"| ... {len(rep['raw_videos']) - len(shown)} more (`--json`, or `--video KEY`) | |")
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
    p.add_argument("--verify", action="store_true",
                   help="check every per-video row of the datasets' lineage tables against the event log")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from dagster import DagsterInstance

    from orchestration.instance import ensure_dagster_home

    ensure_dagster_home()
    instance = DagsterInstance.get()
    try:
        rep = lineage(instance, args.asset_key, args.partition, verify=getattr(args, "verify", False),
                      video=args.video)
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
