"""qrank: a fast, faithful serving and inference engine for LLM-based rerankers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qrank.config import EngineArgs

if TYPE_CHECKING:
    from qrank.llm import LLM, Reranker, ScoreOutput, ScoringOutput, ScoringRequestOutput

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "EngineArgs",
    "Reranker",
    "ScoreOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
    "__version__",
]
_FROM_LLM = {"LLM", "Reranker", "ScoreOutput", "ScoringOutput", "ScoringRequestOutput"}


def __getattr__(name: str) -> Any:
    """Import the engine (and torch) on first use, so `qrank --help` answers at once."""
    if name in _FROM_LLM:
        from qrank import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'qrank' has no attribute {name!r}")
