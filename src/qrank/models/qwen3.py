"""The Qwen3 decoder, written for scoring: a packed forward without padding that returns only the
last token's hidden state of each sequence.

A batch is a list of :class:`SeqGroup`: a shared prefix (the query side of the prompt) and the
documents that follow it. The prefix is computed once per group, or taken from a cache of its
keys and values; each document's tokens attend to the prefix and, causally, to their own.
The last layer computes only what the last tokens need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# Keys and values of a prefix, one (k, v) pair per layer, each [kv_heads, prefix_len, head_dim].
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Qwen3Shape:
    """The hyper-parameters the forward needs, read from config.json."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen3Shape:
        heads = config["num_attention_heads"]
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ValueError(f"unsupported rope scaling {rope!r}")
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        return cls(
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_layers=config["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab_size=config["vocab_size"],
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            max_position_embeddings=config.get("max_position_embeddings", 32768),
        )

    def non_embedding_params(self) -> int:
        """Parameters of the decoder blocks (what each token multiplies through)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        mlp = 3 * h * self.intermediate_size
        return self.num_layers * (attn + mlp)

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        item = torch.empty((), dtype=dtype).element_size()
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * item


@dataclass
class SeqGroup:
    """A shared prefix and the documents that follow it, for one forward.

    ``prefix_kv`` holds the prefix's cached keys and values when the caller has them; then the
    prefix tokens are not computed again. An empty prefix means independent sequences.
    """

    prefix: list[int]
    docs: list[list[int]]
    prefix_kv: PrefixKV | None = None
    keep_prefix_kv: bool = False


@dataclass
class _Bucket:
    """Documents of one group with equal length, contiguous in the packed tokens."""

    group: int
    start: int
    count: int
    length: int


@dataclass
class _Plan:
    input_ids: torch.Tensor
    positions: torch.Tensor
    prefix_segments: dict[int, tuple[int, int]]  # group -> (start, length) computed now
    buckets: list[_Bucket]
    doc_order: list[tuple[int, int]]  # (group, doc index) of each output row
    last_rows: torch.Tensor
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and scaled in the input dtype (as Qwen3)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3Block(nn.Module):
    """One decoder layer with fused QKV and gate-up projections."""

    def __init__(self, shape: Qwen3Shape) -> None:
        super().__init__()
        h, d = shape.hidden_size, shape.head_dim
        self.shape = shape
        self.q_size = shape.num_heads * d
        self.kv_size = shape.num_kv_heads * d
        self.input_norm = RMSNorm(h, shape.rms_norm_eps)
        self.qkv = nn.Linear(h, self.q_size + 2 * self.kv_size, bias=False)
        self.q_norm = RMSNorm(d, shape.rms_norm_eps)
        self.k_norm = RMSNorm(d, shape.rms_norm_eps)
        self.o_proj = nn.Linear(self.q_size, h, bias=False)
        self.post_norm = RMSNorm(h, shape.rms_norm_eps)
        self.gate_up = nn.Linear(h, 2 * shape.intermediate_size, bias=False)
        self.down = nn.Linear(shape.intermediate_size, h, bias=False)

    def project_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normed, rotated q [T, H, d], k [T, Hkv, d] and v [T, Hkv, d] of packed tokens."""
        d = self.shape.head_dim
        qkv = self.qkv(self.input_norm(x))
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.unflatten(-1, (-1, d)))
        k = self.k_norm(k.unflatten(-1, (-1, d)))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v.unflatten(-1, (-1, d))

    def finish(self, residual: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, and the SwiGLU MLP."""
        x = residual + self.o_proj(attn)
        gate, up = self.gate_up(self.post_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Qwen3Scorer(nn.Module):
    """Qwen3 trunk that maps groups of token sequences to their last tokens' hidden states."""

    def __init__(self, shape: Qwen3Shape) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.embed.weight.requires_grad_(False)
        self.layers = nn.ModuleList(Qwen3Block(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        inv_freq = 1.0 / (
            shape.rope_theta
            ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention = sdpa_attention

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def rope(self, positions: torch.Tensor, dtype: torch.dtype
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [T, head_dim], computed in float32 and cast as Qwen3 does."""
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    # ---- planning -------------------------------------------------------------------------
    def _plan(self, groups: list[SeqGroup]) -> _Plan:
        ids: list[int] = []
        positions: list[range] = []
        prefix_segments: dict[int, tuple[int, int]] = {}
        for g, group in enumerate(groups):
            if group.prefix and group.prefix_kv is None:
                prefix_segments[g] = (len(ids), len(group.prefix))
                ids += group.prefix
                positions.append(range(len(group.prefix)))
        buckets: list[_Bucket] = []
        doc_order: list[tuple[int, int]] = []
        last_rows: list[int] = []
        for g, group in enumerate(groups):
            p = len(group.prefix)
            by_length: dict[int, list[int]] = {}
            for i, doc in enumerate(group.docs):
                if not doc:
                    raise ValueError("a document must have at least one token")
                by_length.setdefault(len(doc), []).append(i)
            for length, members in by_length.items():
                buckets.append(_Bucket(g, len(ids), len(members), length))
                for i in members:
                    ids += group.docs[i]
                    positions.append(range(p, p + length))
                    doc_order.append((g, i))
                    last_rows.append(len(ids) - 1)
        pos = torch.tensor([i for r in positions for i in r], dtype=torch.long)
        return _Plan(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=pos,
            prefix_segments=prefix_segments,
            buckets=buckets,
            doc_order=doc_order,
            last_rows=torch.tensor(last_rows, dtype=torch.long),
        )

    # ---- forward --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, groups: list[SeqGroup]) -> tuple[torch.Tensor, list[tuple[int, int]],
                                                        dict[int, PrefixKV]]:
        """Hidden states after the final norm of every document's last token.

        Returns ``(hidden [n_docs, hidden_size], order, new_prefix_kv)``: row ``r`` belongs to
        document ``order[r] = (group, doc)``; ``new_prefix_kv`` holds the keys and values of the
        prefixes computed here for groups that asked to keep them.
        """
        plan = self._plan(groups)
        device = self.device
        x = self.embed(plan.input_ids.to(device))
        cos, sin = self.rope(plan.positions.to(device), x.dtype)
        last_rows = plan.last_rows.to(device)
        kept: dict[int, PrefixKV] = {
            g: [] for g in plan.prefix_segments if groups[g].keep_prefix_kv
        }
        n_layers = len(self.layers)
        for li, layer in enumerate(self.layers):
            q, k, v = layer.project_qkv(x, cos, sin)
            prefix_kv = {}
            for g, group in enumerate(groups):
                if g in plan.prefix_segments:
                    s, n = plan.prefix_segments[g]
                    prefix_kv[g] = (k[s : s + n].transpose(0, 1), v[s : s + n].transpose(0, 1))
                    if g in kept:
                        kept[g].append((prefix_kv[g][0].clone(), prefix_kv[g][1].clone()))
                elif group.prefix_kv is not None:
                    prefix_kv[g] = group.prefix_kv[li]
            if li < n_layers - 1:
                attn = torch.empty_like(q)
                self._attend_all(plan, q, k, v, prefix_kv, attn)
                x = layer.finish(x, attn.flatten(1))
            else:
                attn = self._attend_last(plan, q, k, v, prefix_kv)
                x = layer.finish(x[last_rows], attn.flatten(1))
        return self.norm(x), plan.doc_order, kept

    def _attend_all(self, plan: _Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    out: torch.Tensor) -> None:
        """Attention for every token: prefixes causally, documents over prefix + themselves."""
        for s, n in plan.prefix_segments.values():
            out[s : s + n] = self.attention(
                q[s : s + n].transpose(0, 1)[None],
                k[s : s + n].transpose(0, 1)[None],
                v[s : s + n].transpose(0, 1)[None],
                causal=True,
            )[0].transpose(0, 1)
        for b in plan.buckets:
            e = b.start + b.count * b.length
            qb = q[b.start : e].unflatten(0, (b.count, b.length)).transpose(1, 2)
            kb = k[b.start : e].unflatten(0, (b.count, b.length)).transpose(1, 2)
            vb = v[b.start : e].unflatten(0, (b.count, b.length)).transpose(1, 2)
            pkv = prefix_kv.get(b.group)
            if pkv is None:
                ob = self.attention(qb, kb, vb, causal=True)
            else:
                pk, pv = pkv
                kb = torch.cat((pk[None].expand(b.count, -1, -1, -1), kb), dim=2)
                vb = torch.cat((pv[None].expand(b.count, -1, -1, -1), vb), dim=2)
                mask = self._mask(plan, pk.shape[1], b.length, q.device)
                ob = self.attention(qb, kb, vb, mask=mask)
            out[b.start : e] = ob.transpose(1, 2).flatten(0, 1)

    def _attend_last(self, plan: _Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Attention output [n_docs, H, d] for each document's last token only."""
        outs = []
        for b in plan.buckets:
            e = b.start + b.count * b.length
            qb = q[b.start + b.length - 1 : e : b.length].unsqueeze(2)  # [n, H, 1, d]
            kb = k[b.start : e].unflatten(0, (b.count, b.length)).transpose(1, 2)
            vb = v[b.start : e].unflatten(0, (b.count, b.length)).transpose(1, 2)
            pkv = prefix_kv.get(b.group)
            if pkv is not None:
                pk, pv = pkv
                kb = torch.cat((pk[None].expand(b.count, -1, -1, -1), kb), dim=2)
                vb = torch.cat((pv[None].expand(b.count, -1, -1, -1), vb), dim=2)
            outs.append(self.attention(qb, kb, vb)[:, :, 0])
        return torch.cat(outs)

    @staticmethod
    def _mask(plan: _Plan, prefix_len: int, length: int, device: torch.device) -> torch.Tensor:
        """Boolean mask [length, prefix_len + length]: all of the prefix, then causal."""
        key = (prefix_len, length)
        mask = plan.masks.get(key)
        if mask is None:
            mask = torch.ones(length, prefix_len + length, dtype=torch.bool, device=device)
            mask = mask.tril(diagonal=prefix_len)
            plan.masks[key] = mask
        return mask


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query scaled dot-product attention on 4-D [batch, heads, seq, dim] tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=True)
