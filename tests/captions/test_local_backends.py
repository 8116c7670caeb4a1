"""Local transformers backends on the smoke models: loading, batching, constrained JSON decoding."""

import json

import jsonschema
import pytest

from curation.captioning.types import ChatRequest


def _clip_request(frames, n, seed_colour, text="Describe the clip."):
    content = [{"type": "image", "image": f} for f in frames(n, seed_colour)] + [{"type": "text", "text": text}]
    return ChatRequest(messages=[{"role": "user", "content": content}], max_new_tokens=10)


def test_smoke_models_are_real_architectures_and_cached(smoke_paths):
    from transformers import AutoConfig

    from curation.captioning.smoke_models import ensure_smoke_models

    assert AutoConfig.from_pretrained(smoke_paths.vlm).architectures == ["LlavaForConditionalGeneration"]
    assert AutoConfig.from_pretrained(smoke_paths.llm).architectures == ["Qwen2ForCausalLM"]
    import os

    before = os.stat(os.path.join(smoke_paths.vlm, "model.safetensors")).st_mtime_ns
    again = ensure_smoke_models(os.path.dirname(smoke_paths.root))
    assert again == smoke_paths
    assert os.stat(os.path.join(smoke_paths.vlm, "model.safetensors")).st_mtime_ns == before


def test_vlm_batched_equals_one_by_one(vlm, frames):
    """Left padding must not change greedy captions: a batch of clips with different frame counts
    (so different prompt lengths) gives the same text as captioning each clip alone."""
    reqs = [_clip_request(frames, n, (40 * n, 90, 10)) for n in (1, 3, 2, 4)]
    batched = vlm.chat(reqs)
    single = [vlm.chat([r])[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.ok and r.completion_tokens > 0 and r.finish_reason in ("stop", "length") for r in batched)
    # different inputs give (at least some) different captions: the images reach the model
    assert len({r.text for r in batched}) > 1


def test_llm_json_schema_constrained_output_is_valid(llm, schema_of):
    schema = schema_of("video_qa")
    schema["properties"]["qa"]["maxItems"] = 2
    item = schema["properties"]["qa"]["items"]["properties"]
    item["question"]["maxLength"] = item["answer"]["maxLength"] = 24
    for k in ("start_s", "end_s"):
        item[k]["maximum"] = 20
    # two greedy rows in one batch (different prompt lengths) and one sampled row
    reqs = [ChatRequest(messages=[{"role": "user", "content": p}], max_new_tokens=300, json_schema=schema)
            for p in ("Questions.", "Questions about the video, please, with answers.")]
    reqs.append(ChatRequest(messages=[{"role": "user", "content": "Q"}], max_new_tokens=300, json_schema=schema,
                            temperature=1.0, seed=3))
    for rep in llm.chat(reqs):
        assert rep.finish_reason == "stop", rep.text
        obj = json.loads(rep.text)
        jsonschema.validate(obj, schema)
        assert all(0 <= q["start_s"] <= 20 and 0 <= q["end_s"] <= 20 for q in obj["qa"])


def test_llm_without_constraint_is_not_json(llm):
    """Negative control: the random model does not produce the JSON on its own."""
    rep = llm.chat([ChatRequest(messages=[{"role": "user", "content": "Reply in JSON."}], max_new_tokens=40)])[0]
    with pytest.raises(json.JSONDecodeError):
        json.loads(rep.text)


def test_bad_model_path_is_input_error(tmp_path):
    from curation.captioning.local import LocalChatBackend
    from longvila.errors import InputError

    with pytest.raises(InputError) as e:
        LocalChatBackend(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(e.value)
