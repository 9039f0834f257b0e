"""The random-rerank dataset (vLLM's lengths, one shared query, batches, reproducibility) and
the custom-rerank replay of a JSONL file."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from qrank.bench.datasets import (
    RandomRerankDataset,
    load_tokenizer,
    sample_from_namespace,
)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_lengths_follow_vllm_formulas_at_ratio_zero(tokenizer):
    input_len = 64
    requests = RandomRerankDataset(tokenizer, seed=0).sample(20, input_len=input_len)
    assert len(requests) == 20
    query_len = input_len // 2 - 1
    doc_len = input_len - query_len - 1
    for r in requests:
        assert len(r.documents) == 1
        assert n_tokens(tokenizer, r.query) == query_len
        assert n_tokens(tokenizer, r.documents[0]) == doc_len
        # vLLM counts (query + separator) per document plus the document
        assert r.prompt_len == query_len + 1 + doc_len == input_len


def test_one_query_shared_by_all_requests_and_documents_differ(tokenizer):
    requests = RandomRerankDataset(tokenizer, seed=1).sample(12, input_len=48, batch_size=3)
    assert len({r.query for r in requests}) == 1
    docs = [d for r in requests for d in r.documents]
    assert len(set(docs)) == len(docs) == 12
    assert requests[0].query not in docs


def test_range_ratio_bounds_query_and_documents(tokenizer):
    input_len, ratio = 100, 0.5
    requests = RandomRerankDataset(tokenizer, seed=2).sample(40, input_len=input_len,
                                                             range_ratio=ratio)
    q_nominal = input_len // 2 - 1
    query_len = n_tokens(tokenizer, requests[0].query)
    assert math.floor(q_nominal * (1 - ratio)) <= query_len <= math.ceil(q_nominal * (1 + ratio))
    d_nominal = input_len - query_len - 1
    lo, hi = math.floor(d_nominal * (1 - ratio)), math.ceil(d_nominal * (1 + ratio))
    doc_lens = [n_tokens(tokenizer, r.documents[0]) for r in requests]
    assert all(lo <= n <= hi for n in doc_lens), (lo, hi, doc_lens)
    assert len(set(doc_lens)) > 5  # drawn, not fixed
    assert [r.prompt_len for r in requests] == [query_len + 1 + n for n in doc_lens]


def test_batches_of_documents_per_request(tokenizer):
    requests = RandomRerankDataset(tokenizer, seed=0).sample(10, input_len=32, batch_size=4,
                                                             request_id_prefix="r-")
    assert [len(r.documents) for r in requests] == [4, 4, 2]
    assert [r.request_id for r in requests] == ["r-0", "r-1", "r-2"]
    q = n_tokens(tokenizer, requests[0].query)
    for r in requests:
        assert r.prompt_len == (q + 1) * len(r.documents) + sum(
            n_tokens(tokenizer, d) for d in r.documents)


def test_same_seed_same_texts_other_seed_other_texts(tokenizer):
    a = RandomRerankDataset(tokenizer, seed=7).sample(8, input_len=40, range_ratio=0.3)
    b = RandomRerankDataset(tokenizer, seed=7).sample(8, input_len=40, range_ratio=0.3)
    c = RandomRerankDataset(tokenizer, seed=8).sample(8, input_len=40, range_ratio=0.3)
    assert a == b
    assert a[0].query != c[0].query
    assert [r.documents for r in a] != [r.documents for r in c]


def test_texts_hold_no_special_tokens(tokenizer):
    requests = RandomRerankDataset(tokenizer, seed=3).sample(30, input_len=64)
    vocab = tokenizer.get_vocab_size(with_added_tokens=False)
    for text in [requests[0].query, *(r.documents[0] for r in requests)]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids and max(ids) < vocab


def test_bad_lengths_are_refused(tokenizer):
    ds = RandomRerankDataset(tokenizer, seed=0)
    with pytest.raises(ValueError, match="too small"):
        ds.sample(4, input_len=3)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ds.sample(4, input_len=64, range_ratio=1.0)
    with pytest.raises(ValueError, match="positive"):
        ds.sample(0, input_len=64)


def test_sample_from_the_cli_flags(tokenizer):
    from qrank.cli import build_parser

    ns = build_parser().parse_args([
        "bench", "serve", "--model", "m", "--random-input", "40", "--num-prompts", "6",
        "--random-batch-size", "2", "--random-range-ratio", "0.25", "--seed", "5"])
    assert isinstance(ns, argparse.Namespace) and ns.random_input_len == 40
    requests = sample_from_namespace(ns, tokenizer)
    assert requests == RandomRerankDataset(tokenizer, seed=5).sample(
        6, input_len=40, range_ratio=0.25, batch_size=2)
    assert [len(r.documents) for r in requests] == [2, 2, 2]


def test_document_counts_drawn_from_a_range(tokenizer):
    from qrank.cli import build_parser

    ns = build_parser().parse_args(["bench", "serve", "--model", "m", "--random-input", "32",
                                    "--num-prompts", "200", "--random-batch-size", "3:40"])
    assert ns.random_batch_size == (3, 40)
    requests = sample_from_namespace(ns, tokenizer)
    counts = [len(r.documents) for r in requests]
    assert sum(counts) == 200
    assert all(3 <= n <= 40 for n in counts[:-1]) and 1 <= counts[-1] <= 40
    assert len(set(counts)) > 3  # drawn, not fixed
    # the texts are those of fixed-size requests: the counts are drawn after them
    fixed = RandomRerankDataset(tokenizer, seed=0).sample(200, input_len=32, batch_size=200)
    assert [d for r in requests for d in r.documents] == fixed[0].documents


@pytest.mark.parametrize("value", ["0", "5:2", "a:b", "3:", ":4"])
def test_bad_batch_sizes_are_refused(value, capsys):
    from qrank.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--model", "m",
                                   "--random-batch-size", value])
    assert "--random-batch-size" in capsys.readouterr().err


def test_custom_rerank_replays_a_jsonl_file(tokenizer, tmp_path):
    from qrank.cli import build_parser

    path = tmp_path / "mix.jsonl"
    lines = [{"query": "what is a cat", "documents": ["a cat is an animal", "a car"]},
             {"query": "bulk", "documents": [{"text": f"doc {i}"} for i in range(50)],
              "note": "other keys are ignored"},
             {"query": "third", "documents": ["x"]}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ns = build_parser().parse_args(["bench", "serve", "--model", "m", "--dataset-name",
                                    "custom-rerank", "--dataset-path", str(path),
                                    "--num-prompts", "2"])
    requests = sample_from_namespace(ns, tokenizer)
    assert [r.query for r in requests] == ["what is a cat", "bulk"]
    assert requests[1].documents == [f"doc {i}" for i in range(50)]
    q = n_tokens(tokenizer, "what is a cat")
    assert requests[0].prompt_len == 2 * (q + 1) + n_tokens(tokenizer, "a cat is an animal") \
        + n_tokens(tokenizer, "a car")
    ns.num_prompts = 10  # more than the file holds: all of it
    assert len(sample_from_namespace(ns, tokenizer)) == 3


@pytest.mark.parametrize("line,message", [
    ("{not json", "not JSON"),
    ('{"documents": ["a"]}', "expected"),
    ('{"query": "q", "documents": []}', "non-empty"),
    ('{"query": "q", "documents": [1]}', "string"),
])
def test_custom_rerank_names_the_bad_line(tokenizer, tmp_path, line, message):
    from qrank.bench.datasets import load_custom_rerank

    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "documents": ["d"]}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
        load_custom_rerank(path, tokenizer)


def test_custom_rerank_needs_a_path(tokenizer):
    from qrank.cli import build_parser

    ns = build_parser().parse_args(["bench", "serve", "--model", "m", "--dataset-name",
                                    "custom-rerank"])
    with pytest.raises(ValueError, match="--dataset-path"):
        sample_from_namespace(ns, tokenizer)
