"""The reference: transformers' Qwen3ForCausalLM scoring pairs exactly as the model card does."""

from __future__ import annotations

import torch

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def format_instruction(instruction: str | None, query: str, doc: str) -> str:
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def card_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), padding_side="left")


def card_input_ids(tokenizer, pairs: list[str], max_length: int = 8192) -> list[list[int]]:
    """The model card's process_inputs, before padding."""
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    inputs = tokenizer(
        pairs, padding=False, truncation="longest_first", return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    return [prefix_tokens + ids + suffix_tokens for ids in inputs["input_ids"]]


class CardReference:
    """Model-card scoring with transformers (left padding, last position, yes/no log-softmax)."""

    def __init__(self, model_dir: str, dtype: torch.dtype = torch.float32,
                 max_length: int = 8192) -> None:
        from transformers import AutoModelForCausalLM

        self.tokenizer = card_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        self.max_length = max_length
        self.yes = self.tokenizer.convert_tokens_to_ids("yes")
        self.no = self.tokenizer.convert_tokens_to_ids("no")

    def input_ids(self, pairs: list[str]) -> list[list[int]]:
        return card_input_ids(self.tokenizer, pairs, self.max_length)

    @torch.no_grad()
    def score_ids(self, ids: list[list[int]], batch_size: int = 8) -> list[float]:
        out: list[float] = []
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            inputs = self.tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt")
            # logits_to_keep=1 projects only the last position: the same values as the card's
            # logits[:, -1, :] without a [batch, seq, vocab] tensor of several GB.
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
            two = torch.stack([logits[:, self.no], logits[:, self.yes]], dim=1).float()
            out += torch.nn.functional.log_softmax(two, dim=1)[:, 1].exp().tolist()
        return out

    def score(self, query: str, documents: list[str], instruction: str | None = None
              ) -> list[float]:
        pairs = [format_instruction(instruction, query, d) for d in documents]
        return self.score_ids(self.input_ids(pairs))
