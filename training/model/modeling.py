"""`LongVILAForCausalLM`: SigLIP vision tower -> mlp_downsample projector -> causal LLM.

Sub-modules keep stable names so recipes can freeze/train them and LoRA can target the LLM:
``vision_tower`` (``SiglipVisionModel``), ``mm_projector`` (:class:`MLPDownsampleProjector`),
``llm`` (``AutoModelForCausalLM.from_config(text_config)``: Qwen2, Llama, ...).

Visual tokens: every frame is one ``<image>`` placeholder in the prompt; the processor expands it to
``config.tokens_per_frame`` copies of ``config.image_token_id`` in ``input_ids`` and the model writes
the frame's projected patch features into those rows (in order: frame ``i`` of the batch fills the
``i``-th block of image tokens in row-major order of ``input_ids``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: F401 (return type)

from .configuration import LongVILAConfig

IGNORE_INDEX = -100


class MLPDownsampleProjector(nn.Module):
    """VILA's "mlp_downsample": concatenate each 2x2 neighbourhood of patch features (zero-padding odd
    grids), then LayerNorm -> Linear -> GELU -> Linear into the LLM's hidden size."""

    def __init__(self, config: LongVILAConfig):
        super().__init__()
        self.side = config.patches_per_side
        self.factor = config.downsample
        vis = config.vision_config.hidden_size
        inner = vis * self.factor * self.factor
        hid = config.text_config.hidden_size
        self.layers = nn.Sequential(nn.LayerNorm(inner), nn.Linear(inner, hid), nn.GELU(), nn.Linear(hid, hid))

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        n, p, c = x.shape
        side, f = self.side, self.factor
        if p != side * side:
            raise ValueError(f"projector expects {side * side} patch tokens per frame, got {p}")
        x = x.view(n, side, side, c)
        pad = (-side) % f
        if pad:
            x = F.pad(x, (0, 0, 0, pad, 0, pad))
        s = (side + pad) // f
        x = x.view(n, s, f, s, f, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * s, f * f * c)
        return x

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsample(patch_features))


class LongVILAPreTrainedModel(PreTrainedModel):
    config_class = LongVILAConfig
    config: LongVILAConfig
    base_model_prefix = "longvila"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class LongVILAForCausalLM(LongVILAPreTrainedModel, GenerationMixin):
    def __init__(self, config: LongVILAConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.mm_projector = MLPDownsampleProjector(config)
        self.llm = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    # ------------------------------------------------------------------ embeddings plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.llm.set_output_embeddings(value)

    @property
    def tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    # ------------------------------------------------------------------ vision path
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] frames -> [N, tokens_per_frame, llm_hidden] visual embeddings."""
        dtype = self.mm_projector.layers[1].weight.dtype
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        select = self.config.mm_vision_select_layer
        if select == -1:
            feats = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        else:
            out = self.vision_tower(pixel_values=pixel_values, output_hidden_states=True)
            feats = out.hidden_states[select]
        return self.mm_projector(feats.to(dtype))

    def merge_embeddings(
        self, input_ids: torch.Tensor, image_features: torch.Tensor | None
    ) -> torch.Tensor:
        """Text embeddings of ``input_ids`` with the image-token rows replaced by ``image_features``
        ([N, T, D] or [N*T, D], in order). Differentiable w.r.t. both."""
        embed = self.get_input_embeddings()
        embeds = embed(input_ids)
        mask = input_ids == self.config.image_token_id
        if input_ids.device.type == "meta":  # shape-only run (architecture validation without weights)
            return embeds
        n_img_tokens = int(mask.sum())
        if image_features is None:
            if n_img_tokens:
                raise ValueError(f"input_ids hold {n_img_tokens} image tokens but no pixel_values were given")
            return embeds
        flat = image_features.reshape(-1, image_features.shape[-1]).to(embeds.dtype)
        if flat.shape[0] != n_img_tokens:
            raise ValueError(
                f"input_ids hold {n_img_tokens} image tokens but the frames give {flat.shape[0]} "
                f"({flat.shape[0] // max(1, self.tokens_per_frame)} frames x {self.tokens_per_frame} tokens per frame)"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), flat)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        segment_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_features: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Plain (single-process) forward.

        ``segment_ids`` [B, S] (packed rows: a non-negative id per sample, -1 for padding) builds a
        block-diagonal causal mask and restarts positions per segment; it replaces ``attention_mask``.
        ``labels`` are *unshifted* (HF convention); the loss is the mean over supervised tokens.
        """
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            if image_features is None and pixel_values is not None and (
                input_ids.device.type == "meta" or bool((input_ids == self.config.image_token_id).any())
            ):
                image_features = self.get_image_features(pixel_values)
            inputs_embeds = self.merge_embeddings(input_ids, image_features)
        if segment_ids is not None:
            attention_mask = packed_causal_mask(segment_ids, inputs_embeds.dtype)
            if position_ids is None:
                position_ids = positions_from_segments(segment_ids)
        out = self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        loss = None
        if labels is not None:
            shifted = shift_labels(labels, segment_ids)
            logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX
            )
        # the LLM's own output object (keeps whatever cache field name this transformers version uses)
        out.loss = loss
        return out


# ---------------------------------------------------------------------- helpers shared with MM-SP
def shift_labels(labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets aligned with the inputs: out[b, t] = labels[b, t+1]; the last position and
    every segment's last token (its next token belongs to another sample) get -100."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    if segment_ids is not None:
        boundary = segment_ids[:, 1:] != segment_ids[:, :-1]
        out[:, :-1][boundary] = IGNORE_INDEX
        out[segment_ids < 0] = IGNORE_INDEX
    return out


def positions_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 at every segment start (a padding run, id < 0, counts as its own run)."""
    b, s = segment_ids.shape
    idx = torch.arange(s, device=segment_ids.device).expand(b, s)
    start = torch.ones_like(segment_ids, dtype=torch.bool)
    start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_idx = torch.where(start, idx, torch.zeros_like(idx))
    start_idx = torch.cummax(start_idx, dim=1).values
    return idx - start_idx


def packed_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, S, S] additive mask: query t sees key u iff u <= t and both lie in the same segment
    (padding, id < 0, only sees padding, so no row is empty)."""
    s = segment_ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = (causal[None] & same)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def num_frames_tokens(config: LongVILAConfig, num_frames: int) -> int:
    return num_frames * config.tokens_per_frame


__all__ = [
    "IGNORE_INDEX",
    "LongVILAForCausalLM",
    "LongVILAPreTrainedModel",
    "MLPDownsampleProjector",
    "packed_causal_mask",
    "positions_from_segments",
    "shift_labels",
]
