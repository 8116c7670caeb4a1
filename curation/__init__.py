"""Long-video curation library (no Dagster): probe, shots, clips, frames, captions, instructions."""
