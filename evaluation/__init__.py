"""Long-video benchmarks (no Dagster): V-NIAH, VideoMME-format multiple choice, caption scores.

| module | what |
|---|---|
| `evaluation.niah` | V-NIAH: needles, grid (frame count x depth), insertion, scoring, results table, heatmap PNG |
| `evaluation.videomme` | VideoMME-format question files, subtitles, uniform frames, accuracy per duration / subtitles |
| `evaluation.answers` | answer-letter extraction from free-form replies; V-NIAH answer normalisation |
| `evaluation.caption_score` | LLM judge (correctness / detail / context, 1-5) with robust parsing and retries |
| `evaluation.similarity` | ROUGE-L, n-gram F1, BLEU-4 (reference-based, no model) |
| `evaluation.runner` | `ModelRunner`: a LongVILA checkpoint as answerer (generate, teacher-forced greedy, letters) |
| `evaluation.sharded` | `ShardedRunner` + `python -m evaluation.sharded` under torchrun: MM-SP sharded V-NIAH |
| `evaluation.benchmarks` | end-to-end runs from a checkpoint (used by the CLI and the Dagster assets) |
| `evaluation.fixtures` | generated VideoMME-format fixture with known answers, scripted oracle, reference captions |
| `evaluation.cli` | `longvila eval niah|videomme|caption` |
| `evaluation.bench` | cost of the V-NIAH scoring strategies |
"""
