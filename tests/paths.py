"""Where the shared test data lives (../shared beside the checkout, or $QRANK_SHARED)."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QRANK_SHARED", ROOT.parent / "shared"))
TOKENIZER_DIR = SHARED / "qwen3-tokenizer"
SEED_RECIPE = SHARED / "seed" / "000_153ae664cb503a10.txt"
