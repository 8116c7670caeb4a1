"""Long-video benchmarks (no Dagster): V-NIAH, VideoMME-format multiple choice, caption scores."""
