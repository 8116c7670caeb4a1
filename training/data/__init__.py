"""Stage datasets: records (on-disk format), building from curated captions / external sets / the
passkey generator, tokenisation with the model's chat template and label masking, and packing."""

from .packing import IGNORE_INDEX, PackedRow, collate_rows, pack_samples, segment_mask
from .passkey import passkey_records, render_passkey
from .records import SAMPLES_SCHEMA, make_record, read_manifest, read_records, write_dataset
from .stages import RowsReport, StepOrder, build_rows, uniform_indices

__all__ = [
    "IGNORE_INDEX", "PackedRow", "collate_rows", "pack_samples", "segment_mask", "passkey_records",
    "render_passkey", "SAMPLES_SCHEMA", "make_record", "read_manifest", "read_records", "write_dataset",
    "RowsReport", "StepOrder", "build_rows", "uniform_indices",
]
