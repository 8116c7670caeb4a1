"""Assets that report on the instance itself: ``training_lineage_report``.

The lineage audit walks the event log (`orchestration.lineage`), so its asset lives here, beside the
audit, rather than in `assets/` (which never imports `orchestration`). It re-runs whenever the stage-5
checkpoint gets a new data version (`assets.policies.ON_NEW_DATA`).
"""

import hashlib

from dagster import AssetExecutionContext, AssetKey, DataVersion, Definitions, MaterializeResult, MetadataValue, asset

from assets.policies import ON_NEW_DATA
from assets.training import GROUP, STAGE_KEYS

from .lineage import lineage, to_markdown

LINEAGE_REPORT = AssetKey("training_lineage_report")


@asset(key=LINEAGE_REPORT, deps=[STAGE_KEYS[-1]], group_name=GROUP, code_version="lineage-report-v1",
       kinds={"markdown"}, automation_condition=ON_NEW_DATA,
       description="Lineage audit of the final checkpoint: every raw video (key, sha256), dataset manifest, "
                   "code version and stage checkpoint hash it derives from (also: `longvila lineage`).")
def training_lineage_report(context: AssetExecutionContext) -> MaterializeResult:
    rep = lineage(context.instance, STAGE_KEYS[-1].to_user_string())
    md = to_markdown(rep)
    return MaterializeResult(
        data_version=DataVersion(hashlib.sha256(md.encode()).hexdigest()),
        metadata={"report": MetadataValue.md(md), "raw_videos": len(rep["raw_videos"]), "steps": len(rep["nodes"])},
    )


defs = Definitions(assets=[training_lineage_report])
