"""Tokenizer (built locally, no downloads), image processor and `LongVILAProcessor`.

The processor turns LLaVA-format conversations plus frames into model inputs::

    conv = [{"from": "human", "value": "<video>\\n What happens?"}, {"from": "gpt", "value": "A cat jumps."}]
    batch = processor(conversations=[conv], frames=[[pil0, pil1, pil2]])
    # input_ids [B, S] (right-padded), attention_mask [B, S], labels [B, S] (prompt/-100, answers supervised),
    # pixel_values [N_frames_total, 3, H, W], frames_per_sample [B]

``<video>`` expands to one ``<image>`` per frame; each ``<image>`` expands to ``tokens_per_frame``
image-token ids (the rows the model fills with the frame's visual embeddings). Turns are rendered with
a ChatML template (``<|im_start|>role\\n ... <|im_end|>\\n``); the assistant's text and its
``<|im_end|>`` are supervised, everything else gets -100.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast, ProcessorMixin
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from longvila.errors import InputError

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN]
DEFAULT_SYSTEM = "You are a helpful assistant that answers questions about videos."
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
IGNORE_INDEX = -100

# Jinja rendering of the same format, for `tokenizer.apply_chat_template` (messages with role/content).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A small built-in corpus so the byte-level BPE has sensible merges for English video talk.
_CORPUS = """
The video shows a person walking along a quiet street at night while cars pass by with bright lights.
A cat jumps onto the table, looks at the camera and then runs out of the room through the open door.
What happens at the beginning of the video? What colour is the car? How many people are in the scene?
Describe the video in detail. Summarise the events in order. Where does the scene take place?
The man in the red shirt picks up a ball and throws it to a child who is standing near the green tree.
In the kitchen a woman cuts vegetables, boils water and serves soup to her family at the wooden table.
The weather is sunny, then clouds arrive and it starts to rain; people open umbrellas and hurry home.
A dog chases a bird across the park. The bird flies over the lake and lands on a small boat.
Question: Which object appears first? Answer: a blue cup. Question: Is the door open? Answer: yes.
The text on the sign reads welcome to the city. The clock shows ten past three in the afternoon.
First, then, after that, finally, before, while, during, because, although, however, suddenly.
one two three four five six seven eight nine ten hundred thousand first second third last
red orange yellow green blue purple black white grey brown pink left right top bottom center
A B C D E yes no true false the a an is are was were be been has have had do does did will can
""" * 3


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN],
        model_max_length=1 << 20,
        padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_image_processor(image_size: int) -> SiglipImageProcessorPil:
    """SigLIP preprocessing configured locally: resize to image_size^2, rescale 1/255, normalise (0.5, 0.5)."""
    return SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_resize=True,
        do_rescale=True,
        do_normalize=True,
    )


class LongVILAProcessor(ProcessorMixin):
    """Conversation + frames -> input_ids / labels / attention_mask / pixel_values."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        tokens_per_frame: int = 1,
        system_prompt: str = DEFAULT_SYSTEM,
        **kwargs,
    ):
        self.tokens_per_frame = int(tokens_per_frame)
        self.system_prompt = system_prompt
        super().__init__(image_processor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)

    # ------------------------------------------------------------------ ids
    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IM_END)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    # ------------------------------------------------------------------ one conversation
    def encode_conversation(
        self,
        conversation: Sequence[dict[str, Any]],
        num_frames: int,
        add_generation_prompt: bool = False,
        source: str = "conversation",
    ) -> tuple[list[int], list[int]]:
        """Return (input_ids, labels) for one conversation with ``num_frames`` frames."""
        if not isinstance(conversation, (list, tuple)) or not conversation:
            raise InputError(source, "conversation must be a non-empty list of {'from', 'value'} turns")
        turns: list[tuple[str, str]] = []
        for i, turn in enumerate(conversation):
            if not isinstance(turn, dict):
                raise InputError(source, f"turn {i} is not a dict")
            role = ROLE_MAP.get(str(turn.get("from", turn.get("role", ""))).lower())
            value = turn.get("value", turn.get("content"))
            if role is None or not isinstance(value, str):
                raise InputError(source, f"turn {i} needs 'from' in {sorted(ROLE_MAP)} and a string 'value'")
            turns.append((role, value))
        n_video = sum(v.count(VIDEO_TOKEN) for _, v in turns)
        if n_video > 1:
            raise InputError(source, f"{n_video} <video> placeholders; at most one per conversation")
        if n_video and num_frames == 0:
            raise InputError(source, "a <video> placeholder but 0 frames")
        if n_video:
            turns = [(r, v.replace(VIDEO_TOKEN, IMAGE_TOKEN * num_frames)) for r, v in turns]
        n_img = sum(v.count(IMAGE_TOKEN) for _, v in turns)
        if n_img != num_frames:
            raise InputError(source, f"{n_img} image placeholders but {num_frames} frames")
        if any(r == "assistant" and IMAGE_TOKEN in v for r, v in turns):
            raise InputError(source, "image placeholders inside an assistant turn")

        ids: list[int] = []
        labels: list[int] = []

        def add(text: str, supervised: bool):
            t = self._encode(text)
            ids.extend(t)
            labels.extend(t if supervised else [IGNORE_INDEX] * len(t))

        if turns[0][0] != "system":
            turns.insert(0, ("system", self.system_prompt))
        for role, value in turns:
            if role == "assistant":
                add(f"{IM_START}assistant\n", False)
                add(f"{value}{IM_END}", True)
                add("\n", False)
            else:
                add(f"{IM_START}{role}\n{value}{IM_END}\n", False)
        if add_generation_prompt:
            add(f"{IM_START}assistant\n", False)

        # expand each <image> to tokens_per_frame image-token rows
        img = self.image_token_id
        out_ids: list[int] = []
        out_labels: list[int] = []
        for t, lab in zip(ids, labels):
            if t == img:
                out_ids.extend([img] * self.tokens_per_frame)
                out_labels.extend([IGNORE_INDEX] * self.tokens_per_frame)
            else:
                out_ids.append(t)
                out_labels.append(lab)
        return out_ids, out_labels

    # ------------------------------------------------------------------ frames
    def preprocess_frames(self, frames: Sequence[Any], source: str = "frames") -> torch.Tensor:
        """PIL images / HxWx3 uint8 arrays -> [N, 3, H, W] float32."""
        if len(frames) == 0:
            size = self.image_processor.size
            return torch.zeros(0, 3, size["height"], size["width"])
        images = []
        for i, f in enumerate(frames):
            if isinstance(f, np.ndarray):
                if f.ndim != 3 or f.shape[-1] != 3:
                    raise InputError(source, f"frame {i} has shape {f.shape}, expected HxWx3")
                from PIL import Image

                f = Image.fromarray(f.astype(np.uint8))
            elif not hasattr(f, "convert"):
                raise InputError(source, f"frame {i} is a {type(f).__name__}, expected a PIL image or HxWx3 array")
            images.append(f.convert("RGB"))
        return self.image_processor(images=images, return_tensors="pt")["pixel_values"].float()

    # ------------------------------------------------------------------ batch
    def __call__(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]] | Sequence[dict[str, Any]] | None = None,
        frames: Sequence[Sequence[Any]] | Sequence[Any] | None = None,
        add_generation_prompt: bool = False,
        max_length: int | None = None,
        padding_side: str = "right",
        return_tensors: str = "pt",
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        """Batch of conversations (or a single one) with per-sample frame lists.

        For generation pass conversations that end with the human turn and ``add_generation_prompt=True``
        (left padding, ``padding_side="left"``, suits batched generation)."""
        if conversations is None:
            raise InputError("processor", "no conversations given")
        single = len(conversations) > 0 and isinstance(conversations[0], dict)
        if single:
            conversations = [conversations]
            frames = [frames if frames is not None else []]
        if frames is None:
            frames = [[] for _ in conversations]
        if len(frames) != len(conversations):
            raise InputError("processor", f"{len(conversations)} conversations but {len(frames)} frame lists")
        all_ids, all_labels, pix, counts = [], [], [], []
        for i, (conv, fr) in enumerate(zip(conversations, frames)):
            ids, labels = self.encode_conversation(conv, len(fr), add_generation_prompt, source=f"sample {i}")
            if max_length is not None and len(ids) > max_length:
                raise InputError(f"sample {i}", f"{len(ids)} tokens exceed max_length {max_length}")
            all_ids.append(ids)
            all_labels.append(labels)
            pix.append(self.preprocess_frames(fr, source=f"sample {i} frames"))
            counts.append(len(fr))
        s = max(len(x) for x in all_ids)
        b = len(all_ids)
        input_ids = torch.full((b, s), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, s), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((b, s), dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(all_ids, all_labels)):
            n = len(ids)
            sl = slice(0, n) if padding_side == "right" else slice(s - n, s)
            input_ids[i, sl] = torch.tensor(ids, dtype=torch.long)
            labels[i, sl] = torch.tensor(lab, dtype=torch.long)
            attention_mask[i, sl] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "pixel_values": torch.cat(pix, 0),
            "frames_per_sample": torch.tensor(counts, dtype=torch.long),
        }

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def build_processor(tokens_per_frame: int, image_size: int, vocab_size: int = 512) -> LongVILAProcessor:
    return LongVILAProcessor(
        image_processor=build_image_processor(image_size),
        tokenizer=build_tokenizer(vocab_size),
        tokens_per_frame=tokens_per_frame,
    )


__all__ = [
    "CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "IM_START",
    "IM_END",
    "LongVILAProcessor",
    "build_image_processor",
    "build_processor",
    "build_tokenizer",
]
