"""Export-friendly torch modules over the weights of a transformers Qwen2.5-VL model.

The layer math is written out here (RMSNorm, rotary, masked attention, gated MLP) instead of calling transformers'
forward: its vision tower loops over image grids in Python and its decoder goes through cache objects, neither of
which exports as one size-independent graph. Parity tests against transformers prove the two agree.

Precision: the residual stream, norms, rotary and softmax always run in float32; the heavy matmuls run in
`dtype` (float16 for fp16 bundles). Graph inputs and outputs are float32 whatever `dtype` is.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["VisionGraph", "DecoderGraph", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x * cos + _rotate_half(x) * sin


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    # finite fill, not -inf: a fully masked row (a left-padding slot) gets a uniform row instead of NaN
    scores = torch.where(allowed, scores.float(), torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=-1)


def _cast_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)


class VisionGraph(nn.Module):
    """Vision tower with host-computed indices (DESIGN.md, vision graph): one graph for any grid, any image count.

    `fp32_mlp_blocks`: how many of the last blocks keep their MLP in float32 when dtype is float16 (the known
    Qwen2.5-VL-3B fp16 overflow in the last blocks' down projection).
    """

    def __init__(self, visual: nn.Module, dtype: torch.dtype = torch.float32, fp32_mlp_blocks: int = 2):
        super().__init__()
        cfg = visual.config
        self.dtype = dtype
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.unit = cfg.spatial_merge_size ** 2
        self.fullatt = set(cfg.fullatt_block_indexes)
        depth = len(visual.blocks)
        self.fp32_mlp = set(range(depth - fp32_mlp_blocks, depth)) if dtype != torch.float32 else set()
        # Conv3d with kernel == stride over one patch is a matmul with the flattened kernel
        weight = visual.patch_embed.proj.weight
        self.patch_weight = nn.Parameter(weight.detach().reshape(weight.shape[0], -1).to(dtype), requires_grad=False)
        self.blocks = _cast_copy(visual.blocks, dtype)
        for i in self.fp32_mlp:
            self.blocks[i].mlp.float()
        self.merger = _cast_copy(visual.merger, dtype)
        self.register_buffer("inv_freq", visual.rotary_pos_emb.inv_freq.detach().float().clone(), persistent=False)

    def _attention(self, block, x, cos, sin, allowed):
        n = x.shape[0]
        qkv = block.attn.qkv(x.to(self.dtype)).reshape(n, 3, self.num_heads, self.head_dim)
        q = _rotary(qkv[:, 0], cos, sin).to(self.dtype).transpose(0, 1)  # (H, N, hd)
        k = _rotary(qkv[:, 1], cos, sin).to(self.dtype).transpose(0, 1)
        v = qkv[:, 2].transpose(0, 1)
        scores = torch.matmul(q, k.transpose(1, 2)) * (self.head_dim ** -0.5)
        probs = _masked_softmax(scores, allowed).to(self.dtype)
        out = torch.matmul(probs, v).transpose(0, 1).reshape(n, -1)
        return block.attn.proj(out).float()

    def forward(self, pixel_values, rotary_pos_ids, window_index, reverse_window_index, window_segments,
                image_segments):
        n = pixel_values.shape[0]
        x = torch.matmul(pixel_values.to(self.dtype), self.patch_weight.t()).float()
        # rotary angles per patch (processor order): (h freqs, w freqs) twice, as transformers lays them out
        freqs = rotary_pos_ids.float()[..., None] * self.inv_freq  # (N, 2, F)
        freqs = freqs.reshape(n, -1)
        emb = torch.cat((freqs, freqs), dim=-1)
        # into window order, one merge unit (2x2 patches) at a time
        def to_window_order(t):
            return t.reshape(n // self.unit, self.unit, -1)[window_index].reshape(n, -1)
        x = to_window_order(x)
        emb = to_window_order(emb)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # broadcast over heads
        same_window = (window_segments[:, None] == window_segments[None, :])[None]
        same_image = (image_segments[:, None] == image_segments[None, :])[None]
        for i, block in enumerate(self.blocks):
            allowed = same_image if i in self.fullatt else same_window
            x = x + self._attention(block, rms_norm(x, block.norm1.weight, block.norm1.variance_epsilon),
                                    cos, sin, allowed)
            h = rms_norm(x, block.norm2.weight, block.norm2.variance_epsilon)
            mlp_dtype = torch.float32 if i in self.fp32_mlp else self.dtype
            x = x + block.mlp(h.to(mlp_dtype)).float()
        merger = self.merger
        h = rms_norm(x, merger.ln_q.weight, merger.ln_q.variance_epsilon).to(self.dtype)
        h = merger.mlp(h.reshape(n // self.unit, -1)).float()
        return h[reverse_window_index]


class DecoderGraph(nn.Module):
    """Language model step over host embeddings and a host-managed BSHD KV cache (DESIGN.md, decoder graph).

    forward(inputs_embeds, position_ids, attention_mask, past) -> (logits of the last position, new k/v per layer)
    with past = (past_key.0, past_value.0, past_key.1, ...).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        lm = model.model.language_model
        cfg = lm.config
        self.dtype = dtype
        self.num_heads = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.layers = _cast_copy(lm.layers, dtype)
        self.norm_weight = lm.norm.weight
        self.norm_eps = lm.norm.variance_epsilon
        self.lm_head = _cast_copy(model.lm_head, dtype)
        inv_freq = lm.rotary_emb.inv_freq.detach().float().clone()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # which of the 3 position axes (t, h, w) drives each frequency: transformers' mrope_section split
        section = list(lm.rotary_emb.mrope_section)
        owner = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(section)])
        if owner.numel() != inv_freq.numel():
            raise ValueError(f"mrope_section {section} does not cover head_dim/2 = {inv_freq.numel()} frequencies")
        self.register_buffer("axis_select", nn.functional.one_hot(owner, 3).t().float().contiguous(),
                             persistent=False)  # (3, F)

    def _rotary_tables(self, position_ids):
        freqs = position_ids.float()[..., None] * self.inv_freq  # (3, B, S, F)
        # pick one axis per frequency; multiplying by exact 0/1 and summing keeps the float bits unchanged
        freqs = (freqs * self.axis_select[:, None, None, :]).sum(0)  # (B, S, F)
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]  # (B, S, 1, hd) for BSHD
        return emb.cos(), emb.sin()

    def forward(self, inputs_embeds, position_ids, attention_mask, past):
        b, s, _ = inputs_embeds.shape
        total = attention_mask.shape[1]
        cos, sin = self._rotary_tables(position_ids)
        q_pos = torch.arange(s, device=inputs_embeds.device) + (total - s)
        k_pos = torch.arange(total, device=inputs_embeds.device)
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None] & (attention_mask[:, None, None, :] == 1)
        groups = self.num_heads // self.num_kv

        x = inputs_embeds.float()
        new_kv = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon).to(self.dtype)
            q = _rotary(attn.q_proj(h).reshape(b, s, self.num_heads, self.head_dim), cos, sin)
            k = _rotary(attn.k_proj(h).reshape(b, s, self.num_kv, self.head_dim), cos, sin)
            v = attn.v_proj(h).reshape(b, s, self.num_kv, self.head_dim).float()
            new_kv += [k, v]
            keys = torch.cat((past[2 * i], k), dim=1).to(self.dtype).transpose(1, 2)  # (B, KV, T, hd)
            values = torch.cat((past[2 * i + 1], v), dim=1).to(self.dtype).transpose(1, 2)
            keys = keys.repeat_interleave(groups, dim=1)
            values = values.repeat_interleave(groups, dim=1)
            scores = torch.matmul(q.to(self.dtype).transpose(1, 2), keys.transpose(2, 3)) * (self.head_dim ** -0.5)
            probs = _masked_softmax(scores, allowed).to(self.dtype)
            out = torch.matmul(probs, values).transpose(1, 2).reshape(b, s, -1)
            x = x + attn.o_proj(out).float()
            h = rms_norm(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            x = x + layer.mlp(h.to(self.dtype)).float()
        # keep the sequence axis: a 2-D input would export lm_head as Gemm, which the quantizers skip
        last = rms_norm(x[:, -1:, :], self.norm_weight, self.norm_eps).to(self.dtype)
        logits = self.lm_head(last)[:, 0, :].float()
        return (logits, *new_kv)
