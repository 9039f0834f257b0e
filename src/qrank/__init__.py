"""qrank: a fast, faithful serving and inference engine for LLM-based rerankers."""

from qrank.config import EngineArgs
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
