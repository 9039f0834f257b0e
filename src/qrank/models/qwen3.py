"""The Qwen3 decoder, written for scoring: a packed forward without padding that returns only the
last token's hidden state of each sequence.

A batch is a list of :class:`SeqGroup`: a shared prefix (the query side of the prompt) and the
documents that follow it. The prefix is computed once per group, or taken from a cache of its
keys and values; each document's tokens attend to the prefix and, causally, to their own.
The last layer computes only what the last tokens need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qrank import kernels
from qrank.models.attention import prefix_causal_attention

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

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each block's fused linear layers."""
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.num_heads * d, self.num_kv_heads * d
        return {"qkv": (h, q + 2 * kv), "o_proj": (q, h), "gate_up": (h, 2 * i), "down": (i, h)}

    def non_embedding_params(self) -> int:
        """Parameters of the decoder blocks' linear layers (what each token multiplies through)."""
        return self.num_layers * sum(k * n for k, n in self.projections().values())

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        item = torch.empty((), dtype=dtype).element_size()
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * item


@dataclass
class SeqGroup:
    """A shared prefix and the documents that follow it, for one forward.

    ``prefix_kv`` holds the prefix's cached keys and values when the caller has them; then the
    prefix tokens are not computed again. An empty prefix means independent sequences.

    ``keep_kv``: the group's one document is a piece of a longer sequence that goes on in a
    later forward (chunked prefill), over the keys and values of prefix and document together,
    which the forward returns as it returns kept prefixes.
    """

    prefix: list[int]
    docs: list[list[int]]
    prefix_kv: PrefixKV | None = None
    keep_prefix_kv: bool = False
    keep_kv: bool = False


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
    num_tokens: int  # real tokens; the tail rows after them only pad the views
    continued: dict[int, tuple[int, int]]  # group -> (start, length) of a keep_kv document
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Root-mean-square norm, computed in float32 and scaled in the input dtype (as Qwen3)."""
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add, then the norm of its result: returns ``(x + delta, norm(x + delta))``.

    Both are rounded to the input dtype as Qwen3 rounds them (the add, then the norm).
    """
    x = x + delta
    return x, rms_norm(x, weight, eps)


def qk_norm_rope(
    qkv: torch.Tensor, q_norm_w: torch.Tensor, k_norm_w: torch.Tensor, cos: torch.Tensor,
    sin: torch.Tensor, eps: float, num_heads: int, num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head q/k norms and RoPE on the fused QKV projection of packed tokens.

    Returns q [T, H, d], k [T, Hkv, d], v [T, Hkv, d] (views). q and k heads are normed and
    rotated together; RoPE is written on the two halves of each head, the same products and
    sums as Qwen3's ``q * cos + rotate_half(q) * sin`` (cos and sin repeat their first half),
    which the compiler fuses into one pass.
    """
    d = q_norm_w.shape[0]
    heads = num_heads + num_kv_heads
    qk = qkv[:, : heads * d].unflatten(-1, (heads, d))
    norm = torch.cat((q_norm_w.expand(num_heads, d), k_norm_w.expand(num_kv_heads, d)))
    qk = rms_norm(qk, norm, eps)
    half = d // 2
    x1, x2 = qk[..., :half], qk[..., half:]
    c, s = cos[:, None, :half], sin[:, None, :half]
    qk = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    v = qkv[:, heads * d :].unflatten(-1, (num_kv_heads, d))
    return qk[:, :num_heads], qk[:, num_heads:], v


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` on the fused gate-up projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# The element-wise work between the matmuls; pure functions of their tensors, so one compiled
# graph of each serves every layer. The matmuls stay outside, on prepacked weights.
ELEMENTWISE = {"rms_norm": rms_norm, "add_rms_norm": add_rms_norm,
               "qk_norm_rope": qk_norm_rope, "silu_and_mul": silu_and_mul}


def compile_token_dynamic(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``fn`` compiled once for any number of tokens, every other size fixed.

    The token count is the first dimension of each tensor argument of two or more dimensions;
    it alone is marked dynamic, so the kernels know the hidden and head sizes (``qk_norm_rope``
    ran 1.4x faster than compiled with every size dynamic). One token, as in a last layer
    that keeps a single row, gets its own specialised graph.
    """
    compiled = torch.compile(fn, **options)

    def call(*args: Any) -> Any:
        for a in args:
            if isinstance(a, torch.Tensor) and a.dim() > 1:
                torch._dynamo.maybe_mark_dynamic(a, 0)
        return compiled(*args)

    return call


class RMSNorm(nn.Module):
    """Holds a norm's weight; the computation is :func:`rms_norm`."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Qwen3Block(nn.Module):
    """One decoder layer's weights, with fused QKV and gate-up projections."""

    def __init__(self, shape: Qwen3Shape) -> None:
        super().__init__()
        h, d = shape.hidden_size, shape.head_dim
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
        # documents over a prefix: None (SDPA with a mask) or a kernel with
        # :func:`qrank.kernels.cpu_attention.prefix_attention`'s signature
        self.prefix_attention: Callable[..., None] | None = None
        self.ops: dict[str, Callable[..., Any]] = dict(ELEMENTWISE)

    def compile(self, **options: Any) -> None:  # type: ignore[override]
        """torch.compile the element-wise work between the matmuls: one graph of each function
        for all layers, dynamic in the number of tokens.

        On the CPU each graph gets inductor's C++ wrapper: a call then skips the Python
        wrapper's per-call work, which made workload (b) 1.07x faster with bit-identical
        scores (5 of 5 interleaved rounds, docs/performance.md).
        """
        if self.device.type == "cpu":
            options["options"] = {"cpp_wrapper": True, **options.get("options", {})}
        self.ops = {name: compile_token_dynamic(fn, **options)
                    for name, fn in ELEMENTWISE.items()}

    def use_cpu_attention_kernel(self) -> bool:
        """Attend documents over their prefix with the fastest kernel this device has
        (:func:`qrank.kernels.prefix_attention`); returns whether one is in use."""
        self.prefix_attention = kernels.prefix_attention(self.device, self.dtype)
        return self.prefix_attention is not None

    def use_fused_gate_up(self) -> bool:
        """Run each gate-up projection on a kernel with SiLU·up fused in where this device has
        one for its weights (:func:`qrank.kernels.fused_gate_up`); returns whether every layer
        took it. The other projections stay on oneDNN, which multiplies faster
        (docs/performance.md)."""
        layers = [block.gate_up for block in self.layers]
        if not all(kernels.is_plain_linear(layer) for layer in layers):
            return False
        fused = [kernels.fused_gate_up(layer.weight) for layer in layers]
        if any(f is None for f in fused):
            return False
        for block, layer in zip(self.layers, fused, strict=True):
            block.gate_up = layer
        return True

    def kernels_in_use(self) -> dict[str, Any]:
        """What this trunk runs, as benchmarks record it: its dtype, the prefix attention
        kernel, the fused gate-up kernel, how many linear layers oneDNN holds prepacked, and
        whether the element-wise work is torch.compiled."""
        return {
            "dtype": str(self.dtype).removeprefix("torch."),
            "cpu_attention_kernel": self.prefix_attention is not None,
            "fused_gate_up": all(isinstance(b.gate_up, kernels.FusedGateUp)
                                 for b in self.layers),
            "packed_linears": sum(isinstance(m, kernels.PackedLinear) for m in self.modules()),
            "compiled": any(self.ops[k] is not f for k, f in ELEMENTWISE.items()),
        }

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
        continued: dict[int, tuple[int, int]] = {}
        for g, group in enumerate(groups):
            p = len(group.prefix)
            if group.keep_kv:
                if len(group.docs) != 1:
                    raise ValueError("a group that keeps its keys and values has one document")
                continued[g] = (len(ids), len(group.docs[0]))
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
        # Tail rows, never read as real tokens: every sequence can then be viewed padded to a
        # multiple of PAD_MULTIPLE without running past the end of the packed tensors.
        num_tokens, tail = len(ids), PAD_MULTIPLE - 1
        ids += [0] * tail
        positions.append(range(tail))
        lengths = torch.tensor([len(r) for r in positions], dtype=torch.long)
        starts = torch.tensor([r.start for r in positions], dtype=torch.long)
        # each token's position: its row, moved by its sequence's (first position - first row)
        pos = torch.arange(len(ids)) + torch.repeat_interleave(
            starts - (torch.cumsum(lengths, 0) - lengths), lengths)
        return _Plan(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=pos,
            prefix_segments=prefix_segments,
            buckets=buckets,
            doc_order=doc_order,
            last_rows=torch.tensor(last_rows, dtype=torch.long),
            num_tokens=num_tokens,
            continued=continued,
        )

    # ---- forward --------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, groups: list[SeqGroup]) -> tuple[torch.Tensor, list[tuple[int, int]],
                                                        dict[int, PrefixKV]]:
        """Hidden states after the final norm of every document's last token.

        Returns ``(hidden [n_docs, hidden_size], order, new_prefix_kv)``: row ``r`` belongs to
        document ``order[r] = (group, doc)``; ``new_prefix_kv`` holds the keys and values of the
        prefixes computed here for groups that asked to keep them and, for ``keep_kv`` groups,
        those of prefix and document together (the prefix's first).
        """
        plan = self._plan(groups)
        device = self.device
        x = self.embed(plan.input_ids.to(device))
        cos, sin = self.rope(plan.positions.to(device), x.dtype)
        last_rows = plan.last_rows.to(device)
        kept: dict[int, PrefixKV] = {
            g: [] for g in plan.prefix_segments if groups[g].keep_prefix_kv
        }
        kept.update((g, []) for g in plan.continued)
        ops, shape = self.ops, self.shape
        eps = shape.rms_norm_eps
        n_layers = len(self.layers)
        delta: torch.Tensor | None = None  # the MLP output, added to x by the next norm
        # The attention kernel norms and rotates the documents' q and k itself when every
        # document attends over a prefix (not in the last layer, which reads them again) and
        # no document's keys are kept.
        fuse = (self.prefix_attention is not None and not plan.continued
                and all(g in plan.prefix_segments or group.prefix_kv is not None
                        for g, group in enumerate(groups)))
        for li, layer in enumerate(self.layers):
            if delta is None:
                h = ops["rms_norm"](x, layer.input_norm.weight, eps)
            else:
                x, h = ops["add_rms_norm"](x, delta, layer.input_norm.weight, eps)
            qkv = layer.qkv(h)
            norm_rope = None
            if fuse and li < n_layers - 1:
                q, k, v = self._norm_prefix_rows(plan, layer, qkv, cos, sin)
                norm_rope = kernels.NormRope(layer.q_norm.weight, layer.k_norm.weight,
                                                   cos, sin, eps)
            else:
                q, k, v = ops["qk_norm_rope"](qkv, layer.q_norm.weight, layer.k_norm.weight,
                                              cos, sin, eps, shape.num_heads, shape.num_kv_heads)
            # Padded views read the tail's keys and values: zero, so they can never be inf or
            # NaN (a zero attention weight times NaN is NaN).
            k[plan.num_tokens :] = 0
            v[plan.num_tokens :] = 0
            prefix_kv = {}
            for g, group in enumerate(groups):
                if g in plan.prefix_segments:
                    s, n = plan.prefix_segments[g]
                    prefix_kv[g] = (k[s : s + n].transpose(0, 1), v[s : s + n].transpose(0, 1))
                    if g in kept and not group.keep_kv:
                        kept[g].append((prefix_kv[g][0].clone(), prefix_kv[g][1].clone()))
                elif group.prefix_kv is not None:
                    prefix_kv[g] = group.prefix_kv[li]
            for g, (s, n) in plan.continued.items():
                own = k[s : s + n].transpose(0, 1), v[s : s + n].transpose(0, 1)
                before = prefix_kv.get(g)
                kept[g].append((own[0].clone(), own[1].clone()) if before is None else
                               (torch.cat((before[0], own[0]), 1),
                                torch.cat((before[1], own[1]), 1)))
            if li < n_layers - 1:
                attn = torch.empty_like(q)
                attn[plan.num_tokens :] = 0
                self._attend_all(plan, q, k, v, prefix_kv, attn, norm_rope)
            else:  # the last layer: only the last tokens' rows matter from here on
                attn = self._attend_last(plan, q, k, v, prefix_kv)
                x = x[last_rows]
            attn_out = layer.o_proj(attn.flatten(1))
            if isinstance(layer.gate_up, kernels.FusedGateUp):
                # the kernel adds and norms as it copies its input, then silu(gate) * up
                act, x = layer.gate_up.add_norm_forward(x, attn_out, layer.post_norm.weight, eps)
            else:
                x, h = ops["add_rms_norm"](x, attn_out, layer.post_norm.weight, eps)
                act = ops["silu_and_mul"](layer.gate_up(h))
            delta = layer.down(act)
        assert delta is not None, "a model has at least one layer"
        _, out = ops["add_rms_norm"](x, delta, self.norm.weight, eps)
        return out, plan.doc_order, kept

    def _norm_prefix_rows(self, plan: _Plan, layer: Qwen3Block, qkv: torch.Tensor,
                          cos: torch.Tensor, sin: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as views of the fused projection ``qkv``, with the q/k norms and RoPE
        applied in place to the rows of the prefixes computed now; the documents' rows stay
        raw, for the attention kernel to norm and rotate."""
        shape = self.shape
        heads, kv_heads = shape.num_heads, shape.num_kv_heads
        qk = qkv.unflatten(-1, (heads + 2 * kv_heads, shape.head_dim))
        q, k, v = qk[:, :heads], qk[:, heads : heads + kv_heads], qk[:, heads + kv_heads :]
        for s, n in plan.prefix_segments.values():
            rows = slice(s, s + n)
            qn, kn, _ = self.ops["qk_norm_rope"](
                qkv[rows], layer.q_norm.weight, layer.k_norm.weight, cos[rows], sin[rows],
                shape.rms_norm_eps, heads, kv_heads)
            q[rows] = qn
            k[rows] = kn
        return q, k, v

    def _attend_all(self, plan: _Plan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]],
                    out: torch.Tensor, norm_rope: kernels.NormRope | None = None
                    ) -> None:
        """Attention for every token: prefixes causally, documents over prefix + themselves.
        With ``norm_rope`` the documents' q and k rows are raw, for the kernel to norm and
        rotate (every document then has a prefix). Without a kernel, documents attend over
        their prefix with no mask on the CPU (:mod:`qrank.models.attention`), under a
        boolean mask elsewhere.

        Each sequence is viewed padded at its end to a multiple of ``PAD_MULTIPLE`` (the rows
        after it belong to the next sequence or the plan's tail): the CPU flash kernel runs up
        to 2.5x slower on other lengths, causal attention never lets a real token see a key
        after it, and the outputs of the padding rows are dropped.
        """
        for s, n in plan.prefix_segments.values():
            self._attend_causal(q, k, v, s, 1, n, out)
        for b in plan.buckets:
            pkv = prefix_kv.get(b.group)
            if pkv is None:
                self._attend_causal(q, k, v, b.start, b.count, b.length, out)
                continue
            pk, pv = pkv
            if self.prefix_attention is not None:  # set only for bf16 on the CPU
                self.prefix_attention(q, k, v, pk, pv, out, b.start, b.count, b.length,
                                      norm_rope)
                continue
            p, d_len = pk.shape[1], padded(b.length)
            ob = prefix_causal_attention(*(seq_view(t, b.start, b.count, b.length, d_len)
                                           for t in (q, k, v)), pk, pv)
            if ob is not None:  # no mask: the prefix, then causally the document (CPU)
                store_seqs(out, b.start, b.count, b.length, ob)
                continue
            pp = padded(p)
            kb = torch.cat((pad_seq(pk, pp, 1)[None].expand(b.count, -1, -1, -1),
                            seq_view(k, b.start, b.count, b.length, d_len)), dim=2)
            vb = torch.cat((pad_seq(pv, pp, 1)[None].expand(b.count, -1, -1, -1),
                            seq_view(v, b.start, b.count, b.length, d_len)), dim=2)
            ob = self.attention(seq_view(q, b.start, b.count, b.length, d_len), kb, vb,
                                mask=self._mask(plan, p, pp, d_len, q.device))
            store_seqs(out, b.start, b.count, b.length, ob)

    def _attend_causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                       count: int, length: int, out: torch.Tensor) -> None:
        """Causal attention of ``count`` packed sequences of ``length`` tokens from ``start``."""
        n = padded(length)
        ob = self.attention(seq_view(q, start, count, length, n),
                            seq_view(k, start, count, length, n),
                            seq_view(v, start, count, length, n), causal=True)
        store_seqs(out, start, count, length, ob)

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
    def _mask(plan: _Plan, prefix_len: int, prefix_padded: int, length: int,
              device: torch.device) -> torch.Tensor:
        """Boolean mask [length, prefix_padded + length]: the real prefix, then causal."""
        key = (prefix_len, prefix_padded, length)
        mask = plan.masks.get(key)
        if mask is None:
            mask = torch.ones(length, prefix_padded + length, dtype=torch.bool, device=device)
            mask = mask.tril(diagonal=prefix_padded)
            mask[:, prefix_len:prefix_padded] = False
            plan.masks[key] = mask
        return mask


PAD_MULTIPLE = 16


def padded(length: int) -> int:
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE


def pad_seq(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``t`` zero-padded at the end of ``dim`` to ``length``."""
    extra = length - t.shape[dim]
    if extra == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [0, extra]
    return F.pad(t, pad)


def seq_view(t: torch.Tensor, start: int, count: int, length: int, to: int) -> torch.Tensor:
    """A [count, heads, to, d] view of ``count`` packed sequences of ``length`` tokens in
    ``t`` [T, heads, d] from row ``start``, each read on for ``to`` >= ``length`` rows (into
    what follows it). No copy; the views of neighbouring sequences overlap."""
    rows = start + (count - 1) * length + to
    if rows > t.shape[0]:
        raise ValueError(f"a view to row {rows} runs past the {t.shape[0]} packed rows")
    row, head, col = t.stride()
    return t.as_strided((count, t.shape[1], to, t.shape[2]), (length * row, head, row, col),
                        t.storage_offset() + start * row)


def store_seqs(out: torch.Tensor, start: int, count: int, length: int, ob: torch.Tensor
               ) -> None:
    """Write attention outputs ``ob`` [count, heads, >= length, d] of ``count`` packed
    sequences of ``length`` tokens into ``out`` [T, heads, d] from row ``start``: one copy."""
    rows = out[start : start + count * length].unflatten(0, (count, length))
    rows.copy_(ob[:, :, :length].transpose(1, 2))


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-query scaled dot-product attention on 4-D [batch, heads, seq, dim] tensors."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=True)
