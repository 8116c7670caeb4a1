"""`LongVILAForCausalLM`: SigLIP vision tower -> mlp_downsample projector -> causal LLM.

Sub-modules keep stable names so recipes can freeze/train them and LoRA can target the LLM:
``vision_tower`` (``SiglipVisionModel``), ``mm_projector`` (:class:`MLPDownsampleProjector`),
``llm`` (``AutoModelForCausalLM.from_config(text_config)``: Qwen2, Llama, ...).

Visual tokens: every frame is one ``<image>`` placeholder in the prompt; the processor expands it to
``config.tokens_per_frame`` copies of ``config.image_token_id`` in ``input_ids`` and the model writes
the frame's projected patch features into those rows (in order: frame ``i`` of the batch fills the
``i``-th block of image tokens in row-major order of ``input_ids``).

Long context: the LLM runs the project attention (:func:`use_project_attention`; fused kernels that never
build an S x S score or mask tensor, also for packed rows, padding and KV caches) unless the checkpoint was
loaded with another non-default implementation (flash_attention_2, flex_attention, ...), and the loss goes
chunk-wise over the LM head (:mod:`training.loss`) without [tokens, vocab] logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from training.loss import IGNORE_INDEX, linear_cross_entropy
from training.sp.attention import CONTEXT_KWARG, batch_context, register_mmsp_attention

from .configuration import LongVILAConfig

PROJECT_ATTENTION = "mmsp"  # the LLM's attention implementation (see use_project_attention)


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
        if self.llm.config._attn_implementation in (None, "sdpa", "eager"):
            use_project_attention(self.llm)

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

    # ------------------------------------------------------------------ LLM trunk and LM head
    def llm_hidden_states(self, inputs_embeds: torch.Tensor, **kwargs):
        """The LLM decoder's output (``last_hidden_state`` [B, S, hidden], cache, ...) without the LM head;
        ``kwargs`` go to the decoder (attention_mask, position_ids, cache, use_cache, mmsp_context, ...)."""
        return self.llm.get_decoder()(inputs_embeds=inputs_embeds, **kwargs)

    def lm_head_weight(self) -> torch.Tensor:
        """[vocab, hidden] weight of the LM head (the loss and log-prob helpers multiply it chunk-wise)."""
        head = self.llm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise NotImplementedError("LM heads with a bias are not supported by the chunked loss")
        return head.weight

    def token_loss_sum(self, hidden: torch.Tensor, shifted_labels: torch.Tensor) -> torch.Tensor:
        """Sum of next-token cross-entropies of ``hidden`` [..., hidden] against already shifted labels,
        chunk-wise over the LM head (:func:`training.loss.linear_cross_entropy`): no [tokens, vocab] logits."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        return linear_cross_entropy(flat, self.lm_head_weight(), shifted_labels.reshape(-1).to(flat.device))

    def _packed_context(self, segment_ids: torch.Tensor) -> dict:
        """Batch context that carries ``segment_ids`` to every attention layer as document ranges."""
        if self.llm.config._attn_implementation != PROJECT_ATTENTION:
            raise ValueError(
                f"packed rows (segment_ids) need the project attention {PROJECT_ATTENTION!r} in the LLM, which "
                f"runs {self.llm.config._attn_implementation!r}; call use_project_attention(model.llm)")
        return batch_context(segment_ids, groups=None)

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
        return_logits: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Plain (single-process) forward.

        ``segment_ids`` [B, S] (packed rows: a non-negative id per sample, -1 for padding) reach every
        attention layer as document ranges (no mask tensor; it replaces ``attention_mask``) and restart
        positions per segment. ``labels`` are *unshifted* (HF convention); the loss is the mean over supervised
        tokens, computed chunk-wise over the LM head. Logits ([B, S or logits_to_keep, V]) are returned when
        there are no labels or ``return_logits=True``; a training forward never materialises them.
        """
        if "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, pixel_values, image_features)
        if segment_ids is not None:
            kwargs[CONTEXT_KWARG] = self._packed_context(segment_ids)
            attention_mask = None
            if position_ids is None:
                position_ids = positions_from_segments(segment_ids)
        trunk = self.llm_hidden_states(inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                                       cache=cache, use_cache=use_cache, **kwargs)
        hidden = trunk.last_hidden_state
        loss = None
        if labels is not None:
            shifted = shift_labels(labels, segment_ids).to(hidden.device)
            loss = self.token_loss_sum(hidden, shifted) / (shifted != IGNORE_INDEX).sum()
        logits = None
        if labels is None or return_logits:
            logits = self.llm.get_output_embeddings()(_keep_last(hidden, logits_to_keep))
        rest = {k: v for k, v in trunk.items() if k != "last_hidden_state"}  # cache etc., this version's names
        return CausalLMOutputWithPast(loss=loss, logits=logits, **rest)

    def _embed(self, input_ids, pixel_values, image_features) -> torch.Tensor:
        if input_ids is None:
            raise ValueError("give input_ids or inputs_embeds")
        if image_features is None and pixel_values is not None and (
            input_ids.device.type == "meta" or bool((input_ids == self.config.image_token_id).any())
        ):
            image_features = self.get_image_features(pixel_values)
        return self.merge_embeddings(input_ids, image_features)


def _keep_last(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """transformers' ``logits_to_keep``: 0 = every position, n > 0 = the last n, a tensor = those indices."""
    if isinstance(logits_to_keep, int):
        return hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
    return hidden[:, logits_to_keep]


def use_project_attention(llm) -> None:
    """Route ``llm``'s attention through the project's fused block attention (registered as "mmsp"; at SP
    size 1 it is exact local attention with document ranges, padding and KV caches, without masks)."""
    register_mmsp_attention(PROJECT_ATTENTION)
    llm.config._attn_implementation = PROJECT_ATTENTION


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


def num_frames_tokens(config: LongVILAConfig, num_frames: int) -> int:
    return num_frames * config.tokens_per_frame


__all__ = [
    "IGNORE_INDEX",
    "LongVILAForCausalLM",
    "LongVILAPreTrainedModel",
    "MLPDownsampleProjector",
    "use_project_attention",
    "positions_from_segments",
    "shift_labels",
]
