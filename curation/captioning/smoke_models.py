"""Tiny, random-initialised VLM and LLM of REAL `transformers` architectures, built and saved locally.

Nothing is downloaded: a byte-level BPE tokenizer is trained here on a few paragraphs of text, a
LLaVA model (SigLIP vision tower + Llama language model, the LongVILA layout) and a Qwen2 causal
LM are created from tiny configs with random weights, and both are saved with `save_pretrained`
so that the captioning code loads them back through the ordinary `from_pretrained` path, exactly
as it would load a real checkpoint. Their outputs are meaningless text; they exist so that the
whole pipeline (batching, padding, chat templates, constrained JSON decoding, HTTP serving) runs
for real on a CPU in seconds.

    paths = ensure_smoke_models("data/models")   # cached: built once, reused afterwards
    paths.vlm, paths.llm                          # local checkpoint directories
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

SMOKE_VERSION = "smoke-v1"

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>", IMAGE_TOKEN]

# ChatML, accepting both plain-string content and the multimodal list form
# ({"type": "image"} / {"type": "text", "text": ...}) that processors pass to chat templates.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = """
A person walks across a bright room and picks up a red cup from the wooden table. The camera pans
left to show a window with a city street outside; cars pass and a bus stops at the corner. A woman
in a blue jacket talks to a man holding a phone. Text on a sign reads OPEN 24 HOURS. The video shows
a kitchen, a dog running in a park, children playing football on green grass, a close-up of hands
typing on a keyboard, a sunset over the sea with boats, and a cyclist riding down a mountain road.
Question: What colour is the cup? Answer: The cup is red. Question: What happens after the bus
stops? Answer: People get off the bus and walk to the shop. Where is the dog? The dog is in the
park, to the left of the bench. How many people appear? Two people appear in the first minute.
Summary: the video follows a day in a city, from morning coffee to an evening walk by the sea.
{"summary": "A short video about a city.", "qa": [{"question_type": "Temporal", "question":
"What happens first?", "answer": "A man opens the door.", "start_s": 0, "end_s": 12}]}
Spatial Attribute Action Object OCR Synopsis Temporal. 0 1 2 3 4 5 6 7 8 9 10 15 20 30 45 60.
"""


@dataclass(frozen=True)
class SmokeModelPaths:
    vlm: str
    llm: str
    root: str


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _ascii_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    full = ByteLevel.alphabet()  # the 256 byte-level symbols
    b2u = _bytes_to_unicode()
    # byte-level symbol for each printable ASCII byte, plus newline and tab
    keep = [b2u[b] for b in list(range(0x20, 0x7F)) + [0x0A, 0x09]]
    return [c for c in keep if c in full]


def build_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer (printable-ASCII alphabet) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=_ascii_alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>", IMAGE_TOKEN],
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _build_llm(out: Path, tokenizer, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_vlm(out: Path, tokenizer, seed: int, image_size: int = 32, patch: int = 8) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def ensure_smoke_models(directory: str | os.PathLike, seed: int = 0) -> SmokeModelPaths:
    """Build (once) and return the local paths of the tiny VLM and LLM under `directory`.

    Cached: if `<directory>/<SMOKE_VERSION>/` is complete it is reused as is. Built into a temporary
    folder and renamed, so concurrent callers never see a half-written model.
    """
    root = Path(directory) / SMOKE_VERSION
    marker = root / "READY.json"
    paths = SmokeModelPaths(vlm=str(root / "vlm"), llm=str(root / "llm"), root=str(root))
    if marker.exists():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        tokenizer = build_tokenizer()
        _build_llm(tmp / "llm", tokenizer, seed)
        _build_vlm(tmp / "vlm", tokenizer, seed + 1)
        (tmp / "READY.json").write_text(json.dumps({"version": SMOKE_VERSION, "seed": seed}) + "\n")
        try:
            os.replace(tmp, root)
        except OSError:
            if not marker.exists():  # someone else won the race only if theirs is complete
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return paths
