"""Score heads: the last token's hidden state to one relevance probability, in float32.

Every supported head reduces to ``score = sigmoid(h . w + b)``:

* original reranker (``from_2_way_softmax``): softmax([logit_no, logit_yes])[1]
  = sigmoid(h . (lm_head[yes] - lm_head[no])), so only those two vocabulary rows are kept;
* a converted sequence-classification checkpoint with ``score.weight`` of shape [1, h]: sigmoid;
  of shape [2, h]: softmax(...)[1] = sigmoid(h . (row1 - row0)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from qrank.models.loader import SafetensorsCheckpoint

logger = logging.getLogger(__name__)

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
SCORE = "score.weight"
SCORE_BIAS = "score.bias"


class ScoreHead(nn.Module):
    """sigmoid(h . w + b) with w and b in float32 whatever the trunk's dtype."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().to(torch.float32).reshape(-1))
        self.bias = float(bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The pre-sigmoid logit (logit_yes - logit_no for the original reranker)."""
        return hidden.to(torch.float32) @ self.weight + self.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(hidden))


def sigmoid_scores(logits: list[float]) -> list[float]:
    """Scores from the head's logits: the sigmoid in float32, bit for bit what
    :meth:`ScoreHead.forward` gives (a float32 logit survives the trip through a Python float)."""
    if not logits:
        return []
    return torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()


def vocabulary_rows(
    ckpt: SafetensorsCheckpoint, config: dict[str, Any], token_ids: list[int]
) -> torch.Tensor:
    """Rows of the output projection: lm_head when the checkpoint has its own, else the tied
    input embeddings (0.6B and 4B tie them; 8B has its own lm_head)."""
    tied = config.get("tie_word_embeddings", False)
    if LM_HEAD in ckpt and not tied:
        source = LM_HEAD
    elif tied or LM_HEAD not in ckpt:
        if not tied:
            logger.warning("config says untied embeddings but there is no %s; using %s",
                           LM_HEAD, EMBED)
        source = EMBED
    return ckpt.get_rows(source, token_ids).to(torch.float32)


def from_classifier_tokens(
    ckpt: SafetensorsCheckpoint, config: dict[str, Any], token_id: Callable[[str], int]
) -> ScoreHead:
    """Head from vocabulary rows, as vLLM's ``classifier_from_token``.

    Two tokens ``[neg, pos]`` give the 2-way softmax head (w = row(pos) - row(neg)); one token
    gives sigmoid of that token's logit.
    """
    tokens = config.get("classifier_from_token") or ["no", "yes"]
    ids = [token_id(t) for t in tokens]
    rows = vocabulary_rows(ckpt, config, ids)
    if len(ids) == 2:
        logger.info("score head: sigmoid(lm_head[%r] - lm_head[%r]) from ids %s",
                    tokens[1], tokens[0], ids)
        return ScoreHead(rows[1] - rows[0])
    if len(ids) == 1:
        return ScoreHead(rows[0])
    raise ValueError(f"classifier_from_token must name 1 or 2 tokens, got {tokens!r}")


def from_score_weight(ckpt: SafetensorsCheckpoint) -> ScoreHead:
    """Head of a converted sequence-classification checkpoint (``score.weight``)."""
    weight = ckpt.get(SCORE).to(torch.float32)
    bias = ckpt.get(SCORE_BIAS).to(torch.float32) if SCORE_BIAS in ckpt else None
    if weight.dim() != 2 or weight.shape[0] not in (1, 2):
        raise ValueError(f"score.weight must be [1, h] or [2, h], got {list(weight.shape)}")
    if weight.shape[0] == 1:
        return ScoreHead(weight[0], float(bias[0]) if bias is not None else 0.0)
    b = float(bias[1] - bias[0]) if bias is not None else 0.0
    return ScoreHead(weight[1] - weight[0], b)


def build_head(
    ckpt: SafetensorsCheckpoint, config: dict[str, Any], token_id: Callable[[str], int]
) -> ScoreHead:
    """The head for a checkpoint: its own ``score.weight`` when it has one, else two rows of the
    vocabulary projection (the original reranker, with or without vLLM's hf_overrides)."""
    if SCORE in ckpt and not config.get("classifier_from_token"):
        return from_score_weight(ckpt)
    if SCORE in ckpt:
        logger.warning("classifier_from_token given; ignoring the checkpoint's %s", SCORE)
    if EMBED not in ckpt and LM_HEAD not in ckpt:
        raise ValueError("checkpoint has neither score.weight nor vocabulary rows for a head")
    return from_classifier_tokens(ckpt, config, token_id)
