"""LongVILA VLM (single process): real profiles on the meta device, projector, processor/tokenizer,
save/load round trip, generation with KV cache, packing, and MM-SP at SP size 1 (= the plain model)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from longvila.errors import InputError
from training.model import (
    IGNORE_INDEX,
    LongVILAForCausalLM,
    LongVILAProcessor,
    build_model,
    create_smoke_checkpoint,
    get_profile,
    load_checkpoint,
    parameter_counts,
)
from training.model.modeling import MLPDownsampleProjector, positions_from_segments, shift_labels
from training.model.smoke_data import SmokeBatchSource
from training.sp.sharding import frame_split, mmsp_logits, mmsp_loss


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return create_smoke_checkpoint(tmp_path_factory.mktemp("model") / "smoke", "smoke", seed=0)


@pytest.fixture(scope="module")
def llama_ckpt(tmp_path_factory):
    return create_smoke_checkpoint(tmp_path_factory.mktemp("model") / "smoke-llama", "smoke-llama", seed=2)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_checkpoint(ckpt)


@pytest.fixture(scope="module")
def loaded64(ckpt):
    model, proc = load_checkpoint(ckpt, dtype=torch.float64)
    model.train()
    return model, proc


def _frames(n, seed=0, size=(30, 44)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8) for _ in range(n)]


# ----------------------------------------------------------------------------------------- profiles on meta
@pytest.mark.parametrize(
    "name, llm_params, hidden, layers, heads, kv, vocab",
    [
        ("longvila-7b-qwen2", 7.62e9, 3584, 28, 28, 4, 152064),  # Qwen2-7B: 7.62B parameters
        ("longvila-1.5b-qwen2", 1.54e9, 1536, 28, 12, 2, 151936),  # Qwen2-1.5B: 1.54B (tied embeddings)
        ("longvila-8b-llama3", 8.03e9, 4096, 32, 32, 8, 128256),  # Llama-3-8B: 8.03B
    ],
)
def test_real_profiles_on_meta(name, llm_params, hidden, layers, heads, kv, vocab):
    t0 = time.perf_counter()
    model = build_model(name, device="meta", dtype=torch.bfloat16)
    counts = parameter_counts(model)
    assert abs(counts["llm"] - llm_params) / llm_params < 0.02, counts
    # SigLIP-so400m-patch14-384 vision tower without the pooling head: ~0.41B (0.43B with the head)
    assert abs(counts["vision"] - 0.413e9) / 0.413e9 < 0.02, counts
    assert counts["total"] == counts["vision"] + counts["projector"] + counts["llm"]
    proj_in = 4 * 1152
    assert counts["projector"] == 2 * proj_in + proj_in * hidden + hidden + hidden * hidden + hidden
    assert all(p.device.type == "meta" for p in model.parameters())
    cfg = model.config
    tc = cfg.text_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.vocab_size) == (
        hidden, layers, heads, kv, vocab)
    assert cfg.vision_config.image_size == 384 and cfg.vision_config.patch_size == 14
    assert cfg.tokens_per_frame == 196  # 27x27 patches, padded to 28x28, 2x2 merged
    # shape-only forward on meta: one frame at its placeholder rows, logits over the full vocabulary
    ids = torch.full((1, 260), 7, dtype=torch.long, device="meta")
    out = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 384, 384, device="meta"))
    assert tuple(out.logits.shape) == (1, 260, vocab)
    assert tuple(model.get_image_features(torch.zeros(2, 3, 384, 384, device="meta")).shape) == (2, 196, hidden)
    assert time.perf_counter() - t0 < 60


def test_unknown_profile_is_an_input_error():
    with pytest.raises(InputError, match="unknown model profile"):
        get_profile("longvila-999b")


# ----------------------------------------------------------------------------------------- projector
def test_projector_concatenates_2x2_neighbourhoods_and_pads_odd_grids():
    cfg = get_profile("smoke").config(image_token_id=4)
    proj = MLPDownsampleProjector(cfg)  # 32/8 = 4x4 patches -> 2x2 tokens
    c = cfg.vision_config.hidden_size
    x = torch.arange(16, dtype=torch.float32).repeat_interleave(c).view(1, 16, c)  # patch i -> value i
    y = proj.downsample(x)
    assert y.shape == (1, 4, 4 * c)
    firsts = y[0, :, ::c].tolist()  # the 4 neighbours of each output token, row-major within the 2x2 block
    assert firsts == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    proj.side = 3  # odd grid: 3x3 -> zero-padded 4x4 -> 2x2
    y = proj.downsample(torch.ones(2, 9, c))
    assert y.shape == (2, 4, 4 * c)
    assert y[0, 3].abs().sum() == c  # last token sees one real patch and three padding patches
    with pytest.raises(ValueError, match="patch tokens"):
        proj.downsample(torch.ones(1, 10, c))


# ----------------------------------------------------------------------------------------- processor
def test_processor_masks_prompt_supervises_answers_and_expands_frames(loaded):
    _, proc = loaded
    assert isinstance(proc, LongVILAProcessor)
    t = proc.tokens_per_frame
    conv = [
        {"from": "human", "value": "<video>\nWhat happens?"},
        {"from": "gpt", "value": "A cat jumps."},
        {"from": "human", "value": "And then?"},
        {"from": "gpt", "value": "It runs away."},
    ]
    b = proc(conversations=[conv], frames=[_frames(3)])
    ids, labels = b["input_ids"][0], b["labels"][0]
    assert int((ids == proc.image_token_id).sum()) == 3 * t
    assert b["pixel_values"].shape == (3, 3, 32, 32) and b["frames_per_sample"].tolist() == [3]
    assert bool((labels[ids == proc.image_token_id] == IGNORE_INDEX).all())
    supervised = proc.decode(ids[labels != IGNORE_INDEX])
    assert supervised == "A cat jumps.<|im_end|>It runs away.<|im_end|>"
    # the chat template renders the same text as the ids (no frames)
    conv_txt = [{"from": "human", "value": "Hello there"}, {"from": "gpt", "value": "Hi."}]
    ids_txt, _ = proc.encode_conversation(conv_txt, 0)
    rendered = proc.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi."}], tokenize=False)
    assert proc.decode(ids_txt) == rendered
    # generation prompt ends with the assistant header; left padding for batched generation
    g = proc(conversations=[conv[:1], [{"from": "human", "value": "<video>\nWhy?"}]], frames=[_frames(1), _frames(2)],
             add_generation_prompt=True, padding_side="left")
    assert proc.decode(g["input_ids"][0]).endswith("<|im_start|>assistant\n")
    assert g["attention_mask"][:, -1].tolist() == [1, 1]


@pytest.mark.parametrize(
    "conv, frames, match",
    [
        ([{"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}], 0, "0 frames"),
        ([{"from": "human", "value": "<image> and <image>"}], 1, "2 image placeholders but 1 frames"),
        ([{"from": "robot", "value": "x"}], 0, "turn 0"),
        ([{"from": "human", "value": "<video><video>"}], 2, "at most one"),
        ([], 0, "non-empty"),
        ([{"from": "gpt", "value": "<image>"}], 1, "assistant turn"),
    ],
)
def test_processor_rejects_bad_conversations(loaded, conv, frames, match):
    _, proc = loaded
    with pytest.raises(InputError, match=match):
        proc(conversations=[conv], frames=[_frames(frames)])


def test_processor_rejects_bad_frames(loaded):
    _, proc = loaded
    with pytest.raises(InputError, match="frame 0"):
        proc(conversations=[[{"from": "human", "value": "<video>\nQ"}]], frames=[[np.zeros((4, 4), np.uint8)]])
    with pytest.raises(InputError, match="frame 0"):
        proc(conversations=[[{"from": "human", "value": "<video>\nQ"}]], frames=[["not an image"]])


# ----------------------------------------------------------------------------------------- save / load
def test_smoke_checkpoint_round_trip_identical_logits(ckpt, loaded):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    files = {p.name for p in Path(ckpt).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert json.loads((Path(ckpt) / "config.json").read_text())["model_type"] == "longvila"
    model, proc = loaded
    assert isinstance(AutoConfig.from_pretrained(ckpt).text_config.hidden_size, int)
    auto_model = AutoModelForCausalLM.from_pretrained(ckpt)
    auto_proc = AutoProcessor.from_pretrained(ckpt)
    assert isinstance(auto_model, LongVILAForCausalLM) and isinstance(auto_proc, LongVILAProcessor)
    fresh = build_model("smoke", seed=0)  # same seed -> the weights that were saved
    conv = [{"from": "human", "value": "<video>\nDescribe."}, {"from": "gpt", "value": "Red car."}]
    batch = auto_proc(conversations=[conv], frames=[_frames(2)])
    batch.pop("frames_per_sample")
    with torch.no_grad():
        a = model(**batch, return_logits=True).logits
        b = auto_model(**batch, return_logits=True).logits
        c = fresh(**batch, return_logits=True).logits
        assert model(**batch).logits is None  # a forward with labels does not materialise the logits
    assert torch.equal(a, b) and torch.equal(a, c)
    assert create_smoke_checkpoint(ckpt, "smoke", seed=0) == str(ckpt)  # idempotent, reuses the directory
    # sub-modules keep stable names for freezing and LoRA targets
    names = {n for n, _ in model.named_modules()}
    assert {"vision_tower", "mm_projector", "llm", "llm.model.layers.0.self_attn.q_proj",
            "llm.model.layers.0.self_attn.o_proj"} <= names


def test_tied_embeddings_round_trip(tmp_path):
    cfg = get_profile("smoke").config(image_token_id=4, text={"tie_word_embeddings": True})
    model = build_model(cfg, seed=3)
    assert model.llm.lm_head.weight.data_ptr() == model.llm.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    back = LongVILAForCausalLM.from_pretrained(tmp_path)
    assert back.llm.lm_head.weight.data_ptr() == back.llm.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(5, 500, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)


def test_load_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="hub id"):
        load_checkpoint("Efficient-Large-Model/LongVILA-7B", local_files_only=True)
    assert time.perf_counter() - t0 < 30


# ----------------------------------------------------------------------------------------- generation
def _greedy_reference(model, batch, steps):
    ids = batch["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt], 1)
    return out


@pytest.mark.parametrize("which", ["qwen2", "llama"])
def test_generate_answers_a_question_about_frames(which, loaded, llama_ckpt):
    model, proc = loaded if which == "qwen2" else load_checkpoint(llama_ckpt)
    conv = [{"from": "human", "value": "<video>\nWhat colour is the car?"}]
    batch = proc(conversations=[conv], frames=[_frames(3, seed=1)], add_generation_prompt=True)
    n = batch["input_ids"].shape[1]
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
              max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**kw)
        uncached = model.generate(**kw, use_cache=False)
    assert cached.shape == (1, n + 6)
    assert torch.equal(cached, uncached)
    assert cached[0, n:].tolist() == _greedy_reference(model, batch, 6)
    assert isinstance(proc.decode(cached[0, n:], skip_special_tokens=True), str)
    # the frames matter: other frames give other logits
    other = proc(conversations=[conv], frames=[_frames(3, seed=2)], add_generation_prompt=True)
    with torch.no_grad():
        l1 = model(**{k: batch[k] for k in ("input_ids", "pixel_values")}).logits[0, -1]
        l2 = model(**{k: other[k] for k in ("input_ids", "pixel_values")}).logits[0, -1]
    assert not torch.allclose(l1, l2)


# ----------------------------------------------------------------------------------------- packing and SP=1
def test_shift_labels_and_positions_respect_segments():
    labels = torch.tensor([[1, 2, 3, 4, 5, -100]])
    seg = torch.tensor([[0, 0, 0, 1, 1, -1]])
    assert shift_labels(labels, seg).tolist() == [[2, 3, -100, 5, -100, -100]]
    assert positions_from_segments(seg).tolist() == [[0, 1, 2, 0, 1, 0]]


def test_packed_rows_equal_separate_samples(loaded64):
    model, proc = loaded64
    batch = SmokeBatchSource(proc, seed=11, batch_size=2, frames=(0, 3), pack=2).batch(0)
    t = proc.tokens_per_frame
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], labels=batch["labels"], pixel_values=batch["pixel_values"],
                       segment_ids=batch["segment_ids"], return_logits=True)
        n_packed = int((shift_labels(batch["labels"], batch["segment_ids"]) != IGNORE_INDEX).sum())
        total, n_total, frame = 0.0, 0, 0
        for row in range(2):
            for s in (0, 1):
                sel = batch["segment_ids"][row] == s
                ids = batch["input_ids"][row][sel][None]
                lab = batch["labels"][row][sel][None]
                nf = int((ids == proc.image_token_id).sum()) // t
                pv = batch["pixel_values"][frame:frame + nf] if nf else None
                frame += nf
                single = model(input_ids=ids, labels=lab, pixel_values=pv, return_logits=True)
                k = int((lab[:, 1:] != IGNORE_INDEX).sum())
                total += float(single.loss) * k
                n_total += k
                assert torch.allclose(single.logits[0], packed.logits[row][sel], atol=1e-10, rtol=0)
    assert frame == batch["pixel_values"].shape[0]
    assert n_total == n_packed
    assert abs(total / n_total - float(packed.loss)) < 1e-10


@pytest.mark.parametrize("pack", [1, 2])
def test_mmsp_at_sp_size_1_matches_the_stock_math(loaded64, pack):
    """Fused kernels + chunked loss at SP size 1 (mmsp_loss and the model's own forward) against stock
    transformers (SDPA with a dense block-diagonal mask, full-logits cross-entropy): loss and every gradient."""
    from training.model.sp_checks import reference_logits, reference_loss

    model, proc = loaded64
    batch = SmokeBatchSource(proc, seed=12, batch_size=2, frames=(1, 4), pack=pack).batch(0)
    grads = {}
    for name in ("reference", "mmsp_loss", "forward"):
        model.zero_grad(set_to_none=True)
        if name == "reference":
            loss = reference_loss(model, batch)
        elif name == "mmsp_loss":
            loss, n_tok = mmsp_loss(model, batch, None)
            assert n_tok == int((shift_labels(batch["labels"], batch["segment_ids"]) != IGNORE_INDEX).sum())
        else:
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"], pixel_values=batch["pixel_values"],
                         segment_ids=batch["segment_ids"]).loss
        loss.backward()
        grads[name] = (float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()})
    ref_loss, ref_grads = grads.pop("reference")
    for name, (value, got) in grads.items():
        assert abs(value - ref_loss) < 1e-12, name
        for n, g in got.items():
            assert torch.allclose(g, ref_grads[n], atol=1e-12, rtol=1e-9), (name, n)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits = mmsp_logits(model, batch, None)
        ref = reference_logits(model, batch)
    real = batch["segment_ids"] >= 0
    assert torch.allclose(logits[real], ref[real], atol=1e-12)


def test_packed_rows_with_activation_checkpointing(loaded64):
    """The documents reach the attention as a call keyword, so layers recomputed during backward see them too
    (a lost context would silently attend across documents): gradients equal the stock math."""
    from training.model.sp_checks import reference_loss

    model, proc = loaded64
    batch = SmokeBatchSource(proc, seed=13, batch_size=2, frames=(0, 3), pack=3).batch(0)
    model.zero_grad(set_to_none=True)
    reference_loss(model, batch).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model(input_ids=batch["input_ids"], labels=batch["labels"], pixel_values=batch["pixel_values"],
              segment_ids=batch["segment_ids"]).loss.backward()
    finally:
        model.llm.gradient_checkpointing_disable()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-12, rtol=1e-9), n
    model.zero_grad(set_to_none=True)


def test_frame_split_is_balanced_and_deterministic():
    assert frame_split(5, 4) == [(0, 2), (2, 1), (3, 1), (4, 1)]
    assert frame_split(1, 4) == [(0, 1), (1, 0), (1, 0), (1, 0)]
    assert frame_split(8, 2) == [(0, 4), (4, 4)]
    for n in range(0, 13):
        counts = [c for _, c in frame_split(n, 4)]
        assert sum(counts) == n and max(counts) - min(counts) <= 1


def test_image_token_mismatch_is_reported(loaded):
    model, proc = loaded
    b = proc(conversations=[[{"from": "human", "value": "<video>\nQ"}]], frames=[_frames(2)])
    with pytest.raises(ValueError, match="image tokens"):
        model(input_ids=b["input_ids"], pixel_values=b["pixel_values"][:1])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=b["input_ids"])


# ----------------------------------------------------------------------------------------- smoke data
def test_smoke_batch_source_is_deterministic_and_consistent(loaded):
    _, proc = loaded
    src = SmokeBatchSource(proc, seed=5, batch_size=3, frames=(0, 4), pack=2, pad_to_multiple=16)
    other = SmokeBatchSource(proc, seed=5, batch_size=3, frames=(0, 4), pack=2, pad_to_multiple=16)
    a, b = src.batch(3), other.batch(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = src.batch(4)
    assert c["input_ids"].shape != a["input_ids"].shape or not torch.equal(c["input_ids"], a["input_ids"])
    assert a["input_ids"].shape[1] % 16 == 0 and a["input_ids"].shape[0] == 3
    n_frames = int(a["frames_per_sample"].sum())
    assert a["frames_per_sample"].numel() == 6 and a["pixel_values"].shape[0] == n_frames
    assert int((a["input_ids"] == proc.image_token_id).sum()) == n_frames * proc.tokens_per_frame
    assert set(a["segment_ids"].unique().tolist()) <= {-1, 0, 1}
    assert bool((a["labels"][a["segment_ids"] < 0] == IGNORE_INDEX).all())
    assert bool(((a["labels"] != IGNORE_INDEX).sum(1) > 0).all())
    it = iter(src)
    assert torch.equal(next(it)["input_ids"], src.batch(0)["input_ids"])
    with pytest.raises(ValueError):
        SmokeBatchSource(proc, frames=(3, 1))


def test_lora_targets_the_llm_attention(loaded):
    peft = pytest.importorskip("peft")
    model = build_model("smoke", seed=0)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=r".*llm.*\.(q|k|v|o)_proj"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".llm." in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("o_proj" in n for n in trainable)


def test_batched_left_padded_generation_matches_single_prompts(loaded):
    model, proc = loaded
    convs = [[{"from": "human", "value": "<video>\nWhat happens?"}],
             [{"from": "human", "value": "<video>\nWhere does the scene take place, and who is there?"}]]
    frames = [_frames(1, seed=3), _frames(3, seed=4)]
    b = proc(conversations=convs, frames=frames, add_generation_prompt=True, padding_side="left")
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with torch.no_grad():
        out = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                             pixel_values=b["pixel_values"], **gen)
        for i in range(2):
            s = proc(conversations=[convs[i]], frames=[frames[i]], add_generation_prompt=True)
            one = model.generate(input_ids=s["input_ids"], attention_mask=s["attention_mask"],
                                 pixel_values=s["pixel_values"], **gen)
            assert out[i, b["input_ids"].shape[1]:].tolist() == one[0, s["input_ids"].shape[1]:].tolist()


def test_project_attention_in_a_single_process_matches_sdpa(ckpt):
    """The LongVILA LLM runs the project attention by default; stock SDPA gives the same logits, loss and
    greedy tokens (left-padded batch: padding and KV-cache decode steps through the fused path)."""
    import copy

    model, proc = load_checkpoint(ckpt, dtype=torch.float64)
    assert model.llm.config._attn_implementation == "mmsp"
    ref = copy.deepcopy(model)
    ref.llm.config._attn_implementation = "sdpa"
    b = proc(conversations=[[{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "Cat."}],
                            [{"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Hi there, friend."}]],
             frames=[_frames(2), []])
    b.pop("frames_per_sample")
    with torch.no_grad():
        want, got = ref(**b, return_logits=True), model(**b, return_logits=True)
    real = b["attention_mask"].bool()
    assert torch.allclose(got.logits[real], want.logits[real], atol=1e-10, rtol=0)
    assert abs(float(got.loss) - float(want.loss)) < 1e-10
    convs = [[{"from": "human", "value": "<video>\nWhy?"}], [{"from": "human", "value": "<video>\nHm, a cat?"}]]
    g = proc(conversations=convs,
             frames=[_frames(2), _frames(1, seed=9)], add_generation_prompt=True, padding_side="left")
    kw = dict(input_ids=g["input_ids"], attention_mask=g["attention_mask"], pixel_values=g["pixel_values"],
              max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert not bool(g["attention_mask"].all())  # the second prompt is left-padded
    with torch.no_grad():
        assert torch.equal(ref.generate(**kw), model.generate(**kw))  # KV-cache decode steps included
