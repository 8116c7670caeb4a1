"""Code location of the daemon tests: the project's curation and caption layers, built by the product's own
`build_defs` (sensors, automation, executor, lake from the environment), loaded by a real dagster-daemon."""

from assets import captions, curation
from orchestration.definitions import build_defs

defs = build_defs(modules=[curation, captions])
