"""Export-friendly torch modules over the weights of a transformers Qwen2.5-VL or Qwen2-VL model.

The layer math is written out here (norms, rotary, grouped attention, the KV-cache step) instead of calling
transformers' forward: its vision tower loops over image grids in Python and its decoder goes through cache
objects, neither of which exports as one size-independent graph. Parity tests against transformers prove the two agree.

Precision: the residual stream, norms, rotary and softmax always run in float32; the heavy matmuls run in
`dtype` (float16 for fp16 bundles). Graph inputs and outputs are float32 whatever `dtype` is.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["VisionGraph", "DecoderGraph", "FusedDecoderGraph", "rms_norm", "DECODER_CONTRIB_OPS", "DECODER_ROTARY",
           "decoder_contrib_ops", "rotary_table_rows", "DRAFT_POSITIONS"]

# Positions before the last whose logits the decoder also returns (the draft_logits output): the drafted tokens one run
# can verify. A prefill pays this many extra lm_head rows; a one-token step pays nothing.
DRAFT_POSITIONS = 15


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    # x / sqrt, not x * rsqrt (transformers' form): ONNX Runtime fuses Pow-ReduceMean-Add-Sqrt-Div-Mul into one
    # SimplifiedLayerNormalization and leaves the Reciprocal form as six nodes; the two differ by rounding only
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
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


class _CastLinear(nn.Module):
    """A Linear whose weight stays in its stored dtype (bfloat16, float16) and is cast where it is used: the
    exported graph holds the half-size weight behind a Cast, which the int4 quantizer folds one weight at a time
    (export/quantize.py), so a float32 graph of a 3B decoder never exists in memory."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        super().__init__()
        self.weight, self.bias, self.dtype = linear.weight, linear.bias, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(self.dtype)
        return nn.functional.linear(x, self.weight.to(self.dtype), bias)


def _cast_linears(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    if isinstance(module, nn.Linear):
        return _CastLinear(module, dtype)
    for name, child in module.named_children():
        setattr(module, name, _cast_linears(child, dtype))
    return module


WEIGHTS = ("copy", "in_place", "cast")


def _with_dtype(module: nn.Module, dtype: torch.dtype, weights: str) -> nn.Module:
    """The module's weights in `dtype`. "copy" converts a deep copy (the model stays as loaded, for parity tests);
    "in_place" converts the model's own weights (the exporter owns the model: no second copy of a 3B model);
    "cast" leaves Linear weights as stored and casts them in the graph (int4 export, see _CastLinear); the
    graphs cast norm weights to float32 themselves."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if weights == "cast":
        return _cast_linears(module, dtype)
    if weights == "in_place" or all(p.dtype == dtype for p in module.parameters()):
        return module.to(dtype)
    return copy.deepcopy(module).to(dtype)


# a padding key's extra score in the fused form: exp(this * scale) is 0 next to any real score, in fp32 and fp16
_PAD_KEY = -30000.0
_FUSED_OP = "com.microsoft::MultiHeadAttention"


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm (Qwen2.5-VL) or LayerNorm (Qwen2-VL), in float32."""
    if hasattr(module, "variance_epsilon"):
        return rms_norm(x, module.weight, module.variance_epsilon)
    return nn.functional.layer_norm(x.float(), module.normalized_shape, module.weight.float(), module.bias.float(),
                                    module.eps)


class VisionGraph(nn.Module):
    """Vision tower with host-computed indices (DESIGN.md, vision graph): one graph for any grid, any image count.

    Attention runs per group, never over all patches at once: window blocks per window, full blocks per frame,
    each group padded to the longest (`*_gather` rows, -1 = padding) and put back in patch order (`*_scatter`).
    `attention`: "auto" takes the form measured fastest on ONNX Runtime CPU (benchmarks/results/
    vision-attention-ops.json): full blocks always, and window blocks in float16, through ONNX Runtime's fused
    MultiHeadAttention (no (L x L) scores in memory; padding keys get a large negative score from one extra
    query/key channel, so the kernel needs no mask); "plain" keeps every block in standard ONNX ops (MatMul,
    Softmax), for runtimes without the fused op such as TensorRT.
    `fp32_mlp_blocks`: how many of the last blocks keep their MLP in float32 when dtype is float16 (the known
    Qwen2.5-VL-3B fp16 overflow in the last blocks' down projection).
    `weights`: how the tower's weights become `dtype` ("copy", "in_place", "cast": _with_dtype).
    """

    def __init__(self, visual: nn.Module, dtype: torch.dtype = torch.float32, fp32_mlp_blocks: int = 2,
                 attention: str = "auto", weights: str = "copy"):
        super().__init__()
        cfg = visual.config
        self.dtype = dtype
        self.num_heads = visual.blocks[0].attn.num_heads
        self.head_dim = visual.blocks[0].attn.head_dim
        self.unit = cfg.spatial_merge_size ** 2
        depth = len(visual.blocks)
        # Qwen2-VL has no window blocks: every block attends over its whole frame
        self.fullatt = set(getattr(cfg, "fullatt_block_indexes", None) or range(depth))
        self.windowed = len(self.fullatt) < depth
        self.fused = {"full": attention == "auto", "window": attention == "auto" and dtype == torch.float16}
        # with the fused attention, q and k also turn through ONNX Runtime's RotaryEmbedding (one node instead of
        # rotate_half's Neg/Slice/Concat/Mul/Add), fed a per-patch angle table as the fused decoder does
        self.fused_rotary = attention == "auto"
        self.fp32_mlp = set(range(depth - fp32_mlp_blocks, depth)) if dtype != torch.float32 else set()
        # Conv3d with kernel == stride over one patch is a matmul with the flattened kernel
        weight = visual.patch_embed.proj.weight
        self.patch_weight = nn.Parameter(weight.detach().reshape(weight.shape[0], -1).to(dtype), requires_grad=False)
        self.blocks = _with_dtype(visual.blocks, dtype, weights)
        for i in self.fp32_mlp:
            self.blocks[i].mlp.float()
        self.merger = _with_dtype(visual.merger, dtype, weights)
        self.register_buffer("inv_freq", visual.rotary_pos_emb.inv_freq.detach().float().clone(), persistent=False)

    @property
    def input_names(self) -> list[str]:
        names = ["pixel_values", "rotary_pos_ids", "image_gather", "image_scatter"]
        return names + (["window_gather", "window_scatter"] if self.windowed else [])

    def attention_forms(self, exporter: str) -> dict[str, str]:
        """Which form each block kind was exported in (for the manifest); the legacy TorchScript exporter cannot
        write the fused op, so it gets the plain form."""
        kinds = ["full"] + (["window"] if self.windowed else [])
        fused = {k: self.fused[k] and exporter == "dynamo" for k in kinds}
        return {k: _FUSED_OP.replace("::", ".") if fused[k] else "plain" for k in kinds}

    def contrib_ops(self, exporter: str) -> list[str]:
        """ONNX Runtime's own ops the graph holds (the manifest lists them for the load error that names them)."""
        if exporter != "dynamo" or not self.fused_rotary:
            return []
        return ["MultiHeadAttention", "RotaryEmbedding"]

    def _plain(self, q, k, v, valid):
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (G, H, L, hd)
        scores = torch.matmul(q, k.transpose(2, 3)) * (self.head_dim ** -0.5)
        probs = _masked_softmax(scores, valid[:, None, None, :]).to(self.dtype)
        return torch.matmul(probs, v).transpose(1, 2)

    def _fused(self, q, k, v, valid):
        g, length = valid.shape
        pad = torch.where(valid, 0.0, _PAD_KEY).to(self.dtype)[:, :, None, None].expand(g, length, self.num_heads, 1)
        q = torch.cat((q, torch.ones_like(pad)), dim=-1).reshape(g, length, -1)
        k = torch.cat((k, pad), dim=-1).reshape(g, length, -1)
        v = v.reshape(g, length, -1)
        return torch.onnx.ops.symbolic(_FUSED_OP, (q, k, v), {"num_heads": self.num_heads,
                                                             "scale": self.head_dim ** -0.5},
                                       dtype=v.dtype, shape=v.shape, version=1)

    def _turner(self, freqs):
        """The rotary turn of (N, H, hd) q or k for per-patch angles `freqs` (N, hd / 2): ONNX Runtime's
        RotaryEmbedding over a per-patch table when exporting the fused form, else rotate_half."""
        n = freqs.shape[0]
        if self.fused_rotary and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
            rows, cos, sin = torch.arange(n, device=freqs.device).reshape(1, n), freqs.cos(), freqs.sin()

            def turn(t):
                flat = t.float().reshape(1, n, self.num_heads * self.head_dim)
                out = _contrib("RotaryEmbedding", (flat, rows, cos, sin), {"num_heads": self.num_heads},
                               torch.float32, flat.shape)
                return out.reshape(n, self.num_heads, self.head_dim).to(self.dtype)
            return turn
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # broadcast over heads
        return lambda t: _rotary(t, cos, sin).to(self.dtype)

    def _attention(self, block, x, turn, gather, scatter, fused):
        n = x.shape[0]
        qkv = block.attn.qkv(x.to(self.dtype)).reshape(n, 3, self.num_heads, self.head_dim)
        q, k = turn(qkv[:, 0]), turn(qkv[:, 1])
        valid = gather >= 0
        rows = gather.clamp(min=0).reshape(-1)

        def grouped(t):  # (N, H, hd) -> (G, L, H, hd): one padded row per group
            return t.index_select(0, rows).reshape(*gather.shape, self.num_heads, self.head_dim)

        q, k, v = grouped(q), grouped(k), grouped(qkv[:, 2])
        if fused and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing():
            out = self._fused(q, k, v, valid)
        else:
            out = self._plain(q, k, v, valid)
        out = out.reshape(-1, self.num_heads * self.head_dim).index_select(0, scatter)
        return block.attn.proj(out).float()

    def forward(self, pixel_values, rotary_pos_ids, image_gather, image_scatter, window_gather=None,
                window_scatter=None):
        n = pixel_values.shape[0]
        x = torch.matmul(pixel_values.to(self.dtype), self.patch_weight.t()).float()
        # rotary angles per patch: (h freqs, w freqs) twice, as transformers lays them out
        freqs = rotary_pos_ids.float()[..., None] * self.inv_freq  # (N, 2, F)
        turn = self._turner(freqs.reshape(n, -1))
        for i, block in enumerate(self.blocks):
            kind = "full" if i in self.fullatt else "window"
            groups = (image_gather, image_scatter) if kind == "full" else (window_gather, window_scatter)
            x = x + self._attention(block, _norm(block.norm1, x), turn, *groups, self.fused[kind])
            mlp_dtype = torch.float32 if i in self.fp32_mlp else self.dtype
            x = x + block.mlp(_norm(block.norm2, x).to(mlp_dtype)).float()
        h = _norm(self.merger.ln_q, x).to(self.dtype)
        return self.merger.mlp(h.reshape(n // self.unit, -1)).float()


def _head(lm_head, tail):
    """(logits of the last position, logits of the positions before it) from the tail's normed hidden states."""
    # the sequence axis stays: a 2-D input would export lm_head as Gemm, which the quantizers skip
    logits = lm_head(tail).float()
    return logits[:, -1, :], logits[:, :-1, :]


class DecoderGraph(nn.Module):
    """Language model step over host embeddings and a host-managed BSHD KV cache (DESIGN.md, decoder graph).

    forward(inputs_embeds, position_ids, attention_mask, past) -> (logits of the last position, new k/v per layer,
    logits of up to DRAFT_POSITIONS positions before the last) with past = (past_key.0, past_value.0, past_key.1, ...).
    `weights`: as for VisionGraph.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, weights: str = "copy"):
        super().__init__()
        lm = model.model.language_model
        cfg = lm.config
        self.dtype = dtype
        self.num_heads = cfg.num_attention_heads
        self.num_kv = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.layers = _with_dtype(lm.layers, dtype, weights)
        self.norm_weight = lm.norm.weight
        self.norm_eps = lm.norm.variance_epsilon
        self.lm_head = _with_dtype(model.lm_head, dtype, weights)
        inv_freq = lm.rotary_emb.inv_freq.detach().float().clone()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # which of the 3 position axes (t, h, w) drives each frequency: transformers' mrope_section split
        section = list(lm.rotary_emb.mrope_section)
        self.mrope_section = section
        self.max_position = int(getattr(cfg, "max_position_embeddings", ROTARY_TABLE_MAX))
        owner = torch.cat([torch.full((n,), i % 3) for i, n in enumerate(section)])
        if owner.numel() != inv_freq.numel():
            raise ValueError(f"mrope_section {section} does not cover head_dim/2 = {inv_freq.numel()} frequencies")
        self.register_buffer("axis_select", nn.functional.one_hot(owner, 3).t().float().contiguous(),
                             persistent=False)  # (3, F)

    def _rotary_angles(self, position_ids):
        freqs = position_ids.float()[..., None] * self.inv_freq  # (3, B, S, F)
        # pick one axis per frequency; multiplying by exact 0/1 and summing keeps the float bits unchanged
        return (freqs * self.axis_select[:, None, None, :]).sum(0)  # (B, S, F)

    def _rotary_tables(self, position_ids):
        freqs = self._rotary_angles(position_ids)
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
        tail = rms_norm(x[:, -(DRAFT_POSITIONS + 1):, :], self.norm_weight, self.norm_eps)
        logits, draft = _head(self.lm_head, tail.to(self.dtype))
        return (logits, *new_kv, draft)


# ONNX Runtime's own ops the fused decoder needs (besides MatMulNBits in int4 bundles); the manifest lists them
DECODER_CONTRIB_OPS = ("GroupQueryAttention", "MRotaryEmbedding", "SkipSimplifiedLayerNormalization",
                       "SimplifiedLayerNormalization")
# the fused decoder's rotary forms (--decoder-rotary): "table" looks the mrope angles up in cos/sin tables with
# MRotaryEmbedding (ONNX Runtime >= 1.29, the first release with that op; fewer nodes a step), "computed" computes
# them each step and turns q and k with RotaryEmbedding (every ONNX Runtime the runtime supports)
DECODER_ROTARY = {"table": ("MRotaryEmbedding", "1.29"), "computed": ("RotaryEmbedding", "1.20")}
# rows of the fused decoder's cos/sin tables: positions past them are refused by MRotaryEmbedding (and by the runtime
# before the run, from the manifest); 32768 keeps a 128-wide head's tables at 16 MiB where configs say 128000
ROTARY_TABLE_MAX = 32768
# a left-padding key's score: far below any real score, still finite after adding one
_PAD_BIAS = -1e9


def decoder_contrib_ops(rotary: str = "table") -> list[str]:
    """The contrib ops a fused decoder with this rotary form uses (graphs.decoder.contrib_ops in the manifest)."""
    return [DECODER_ROTARY[rotary][0] if op == "MRotaryEmbedding" else op for op in DECODER_CONTRIB_OPS]


def rotary_table_rows(max_position: int) -> int:
    """Positions the fused decoder's rotary tables cover (graphs.decoder.rotary_positions in the manifest)."""
    return min(int(max_position), ROTARY_TABLE_MAX)


def _packed(linears, cast: torch.dtype | None = None) -> nn.Module:
    """One Linear computing several projections of the same input side by side (one MatMul instead of several);
    cast: its weight stays as stored and is cast in the graph (_CastLinear)."""
    weight = torch.cat([m.weight.detach() for m in linears], dim=0)
    bias = None
    if any(m.bias is not None for m in linears):
        bias = torch.cat([m.bias.detach() if m.bias is not None else weight.new_zeros(m.weight.shape[0])
                          for m in linears])
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=False)
    return out if cast is None else _CastLinear(out, cast)


def _contrib(op: str, inputs, attrs, dtype, shape):
    return torch.onnx.ops.symbolic(f"com.microsoft::{op}", inputs, attrs, dtype=dtype, shape=shape, version=1)


class FusedDecoderGraph(DecoderGraph):
    """The decoder for ONNX Runtime (target "ort"): the same math as DecoderGraph in ONNX Runtime's fused contrib ops.

    Per layer: packed QKV and gate/up MatMuls, (M)RotaryEmbedding on q and k, GroupQueryAttention over a BNSH KV
    buffer that is both its past input and its present output (written in place at slots [T-S, T)), and
    SkipSimplifiedLayerNormalization for each residual add + RMSNorm. With rotary "table" MRotaryEmbedding reads the
    3-D position_ids itself and looks the angles up in cos/sin tables of `rotary_table_rows` positions, made here as
    transformers computes them (float32 position x inv_freq, then cos / sin), so a step has no angle subgraph; with
    "computed" the step computes its tokens' angles and RotaryEmbedding indexes them by token (GQA's own rotary
    takes one 1-D position per prompt, which mrope's image positions are not). seqlens_k is T-1 for every row and
    left padding is masked by an attention bias from attention_mask, so left-padded batches keep slot order.
    Attention and the KV cache stay float32 whatever `dtype` (graph I/O is float32 in every precision).
    Only the dynamo exporter writes these ops (torch.onnx.ops.symbolic); the module is not meant to run eagerly.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, packed: bool = True,
                 weights: str = "copy", rotary: str = "table"):
        super().__init__(model, dtype, weights)
        self.packed = packed  # False: separate projections (benchmarks/decoder_graphs.py measures both)
        if rotary not in DECODER_ROTARY:
            raise ValueError(f"rotary must be one of {sorted(DECODER_ROTARY)}, got {rotary!r}")
        self.rotary = rotary
        if rotary == "table":
            angles = torch.arange(rotary_table_rows(self.max_position)).float()[:, None] * self.inv_freq[None, :]
            self.register_buffer("rotary_cos", angles.cos().contiguous(), persistent=False)
            self.register_buffer("rotary_sin", angles.sin().contiguous(), persistent=False)
        if packed:
            cast = dtype if weights == "cast" else None
            self.qkv = nn.ModuleList(_packed([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj], cast)
                                     for l in self.layers)
            self.gate_up = nn.ModuleList(_packed([l.mlp.gate_proj, l.mlp.up_proj], cast) for l in self.layers)

    def _qkv(self, i, h):
        if self.packed:
            qkv = self.qkv[i](h).float()
            q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv * self.head_dim
            return qkv.split([q_dim, kv_dim, kv_dim], dim=-1)
        attn = self.layers[i].self_attn
        return attn.q_proj(h).float(), attn.k_proj(h).float(), attn.v_proj(h).float()

    def _gate_up(self, i, h):
        if self.packed:
            return self.gate_up[i](h).chunk(2, dim=-1)
        mlp = self.layers[i].mlp
        return mlp.gate_proj(h), mlp.up_proj(h)

    def _turner(self, position_ids):
        """The rotary turn of q or k (B, S, heads * hd) for this step, in the form `rotary` names."""
        if self.rotary == "table":
            return lambda x, heads: _contrib(
                "MRotaryEmbedding", (x, position_ids, self.rotary_cos, self.rotary_sin),
                {"num_heads": heads, "mrope_section": self.mrope_section, "interleaved": 0}, torch.float32, x.shape)
        # the mrope angles of this step's tokens, one table row per token, indexed by token
        b, s = position_ids.shape[1:]
        freqs = self._rotary_angles(position_ids).reshape(b * s, -1)
        cos, sin = freqs.cos(), freqs.sin()
        rows = torch.arange(b * s, device=position_ids.device).reshape(b, s)
        return lambda x, heads: _contrib("RotaryEmbedding", (x, rows, cos, sin), {"num_heads": heads},
                                         torch.float32, x.shape)

    def _skip_norm(self, x, residual, weight, eps):
        """(RMSNorm(x + residual) * weight, x + residual) in one op."""
        shape = residual.shape
        out = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::SkipSimplifiedLayerNormalization", (x, residual, weight.float()), {"epsilon": float(eps)},
            dtypes=[torch.float32] * 4, shapes=[shape, (*shape[:-1], 1), (*shape[:-1], 1), shape], version=1)
        return out[0], out[3]

    def forward(self, inputs_embeds, position_ids, attention_mask, past):
        b, s, _ = inputs_embeds.shape
        total = attention_mask.shape[1]
        # T-1 for every row (slots, not tokens: left padding stays in place), from the mask's last column
        last = attention_mask[:, -1].to(torch.int32)
        seqlens = last * 0 + (total - 1)
        total_len = seqlens[0] + 1
        # every row appends all S tokens; saying so lets GQA take multi-token steps over a past in batches > 1
        new_lens = last * 0 + s
        bias = torch.where(attention_mask[:, None, None, :] == 1, 0.0, _PAD_BIAS).expand(b, 1, s, total)
        turn = self._turner(position_ids)

        x = inputs_embeds.float()
        first = self.layers[0].input_layernorm
        h = torch.onnx.ops.symbolic("SimplifiedLayerNormalization", (x, first.weight.float()),
                                    {"epsilon": float(first.variance_epsilon), "axis": -1}, dtype=torch.float32,
                                    shape=x.shape, version=1)
        present = []
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(i, h.to(self.dtype))
            q, k = turn(q, self.num_heads), turn(k, self.num_kv)
            past_k, past_v = past[2 * i], past[2 * i + 1]
            kv_shape = (b, self.num_kv, past_k.shape[2] + s, self.head_dim)
            out, new_k, new_v = torch.onnx.ops.symbolic_multi_out(
                "com.microsoft::GroupQueryAttention",
                (q, k, v, past_k, past_v, seqlens, total_len, None, None, None, bias, None, None, None, None,
                 None, new_lens),
                {"num_heads": self.num_heads, "kv_num_heads": self.num_kv},
                dtypes=[torch.float32] * 3, shapes=[q.shape, kv_shape, kv_shape], version=1)
            present += [new_k, new_v]
            a = layer.self_attn.o_proj(out.to(self.dtype)).float()
            post = layer.post_attention_layernorm
            h, x = self._skip_norm(a, x, post.weight, post.variance_epsilon)
            gate, up = self._gate_up(i, h.to(self.dtype))
            m = layer.mlp.down_proj(layer.mlp.act_fn(gate) * up).float()
            if i + 1 < len(self.layers):
                norm = self.layers[i + 1].input_layernorm
                h, x = self._skip_norm(m, x, norm.weight, norm.variance_epsilon)
            else:
                h, _ = self._skip_norm(m, x, self.norm_weight, self.norm_eps)
        logits, draft = _head(self.lm_head, h[:, -(DRAFT_POSITIONS + 1):, :].to(self.dtype))
        return (logits, *present, draft)
