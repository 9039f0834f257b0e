"""The interface of a fused gate-up projection, whatever kernel is behind it."""

from __future__ import annotations

import torch
from torch import nn


class FusedGateUp(nn.Module):
    """``forward(x)`` returns ``silu(gate) * up`` [tokens, intermediate] for the [gate; up]
    weight; :meth:`add_norm_forward` also takes the residual add and RMS norm before it."""

    def add_norm_forward(self, x: torch.Tensor, delta: torch.Tensor, norm_weight: torch.Tensor,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(silu(gate) * up of rms_norm(x + delta), x + delta)``."""
        raise NotImplementedError
