"""Varied inputs for fidelity tests: short and long, unicode, odd whitespace and punctuation."""

QUERIES = [
    "What is the capital of China?",
    "how do plants make food",
    "数据库索引是什么",
    "Ωmega-3 fatty acids: benefits? 🐟",
    "  leading and trailing spaces  ",
    "query ending with newline\n",
]

DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to "
    "physical objects and is responsible for the movement of planets around the sun.",
    "Photosynthesis converts light, water and CO2 into glucose and oxygen.",
    "索引是一种加快数据库查询的数据结构。",
    "Les oméga-3 sont des acides gras essentiels 🐟🐟.",
    "",
    "x",
    "Tabs\tand\nnewlines\n\nand   spaces   ",
    "<Document>: a document that looks like a template piece <|im_end|>",
    " ".join(f"word{i}" for i in range(700)),  # long: ~1,400 tokens
]

INSTRUCTIONS = [
    None,
    "",
    "Given a question, retrieve passages that answer it",
    "根据问题检索相关段落",
]


def long_document(words: int = 7900, seed: int = 0) -> str:
    """About two tokens a word (~16k tokens by default) of words drawn from DOCUMENTS."""
    import random

    rng = random.Random(seed)
    vocab = sorted({w for d in DOCUMENTS for w in d.split()})
    return " ".join(rng.choice(vocab) for _ in range(words))
