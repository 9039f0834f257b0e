import json
import os
import subprocess
import sys

import pytest


def qrank(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "qrank.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_make_test_model_writes_the_hf_layout(tmp_path, tokenizer_dir):
    out = tmp_path / "m"
    proc = qrank("make-test-model", str(out), "--shape", "tiny", "--tokenizer",
                 str(tokenizer_dir), "--format", "seq-cls", "--shards", "2", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "config.json", "merges.txt", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "tokenizer.json", "tokenizer_config.json", "vocab.json",
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert config["vocab_size"] == 151669 and config["torch_dtype"] == "bfloat16"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert "score.weight" in index["weight_map"]


def test_real_shape_configs_match_the_releases():
    from qrank.testing import make_config

    c = make_config("0.6b", "original", "bfloat16")
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (1024, 3072, 28)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (16, 8, 128)
    assert c["tie_word_embeddings"] is True and c["rope_theta"] == 1000000
    c8 = make_config("8b", "original", "bfloat16")
    assert (c8["hidden_size"], c8["num_hidden_layers"], c8["tie_word_embeddings"]) == (
        4096, 36, False)


def test_score_command(tiny_model):
    proc = qrank("score", str(tiny_model), "capital of China?", "Beijing is the capital.",
                 "Gravity pulls.", "--top-n", "1", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    row = json.loads(line)
    assert set(row) == {"index", "relevance_score", "document"}


def test_bad_model_path_is_a_clear_error(tmp_path):
    proc = qrank("score", str(tmp_path / "nope"), "q", "d")
    assert proc.returncode == 1
    assert "no such directory" in proc.stderr


HELP_COMMANDS = [[], ["serve"], ["score"], ["score-file"], ["bench", "serve"],
                 ["bench", "throughput"], ["make-test-model"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "qrank")
def test_help_shows_defaults_and_an_example(command):
    proc = qrank(*command, "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "example" in text and "\n  qrank " in text  # an example command line
    if command:
        assert "(default: " in text
    if command in (["serve"], ["score"]):
        # the common flags come before the rest
        assert text.index("--dtype") < text.index("--max-num-batched-tokens")
        assert text.index("--max-model-len") < text.index("--hf-overrides")


def test_serve_help_lists_common_flags_first_with_their_defaults():
    text = qrank("serve", "--help", timeout=60).stdout
    common = text.index("\ncommon:")
    assert common < text.index("\nserver:") < text.index("\nengine:")
    assert "--port PORT           port to listen on (default: 8000)" in text
    assert text.index("--host", common) < text.index("\nserver:")


def test_serve_help_never_shows_the_api_key(monkeypatch):
    monkeypatch.setenv("QRANK_API_KEY", "s3cret-value")
    proc = qrank("serve", "--help", timeout=60)
    assert "s3cret-value" not in proc.stdout and "$QRANK_API_KEY" in proc.stdout


def test_vllm_flags_that_mean_nothing_here_are_accepted_with_one_warning(tmp_path):
    proc = qrank("score", str(tmp_path / "nope"), "q", "d", "--gpu-memory-utilization", "0.9",
                 "--tensor_parallel_size", "2", "--enforce-eager", "--trust-remote-code",
                 "--max-num-seqs", "8", timeout=60)
    assert proc.returncode == 1  # got past parsing to the missing model
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    for flag in ("--gpu-memory-utilization", "--tensor_parallel_size", "--enforce-eager",
                 "--trust-remote-code"):
        assert flag in warnings[0]
    assert "--max-num-seqs" not in warnings[0]  # a real flag here


def test_every_ignored_vllm_kwarg_is_an_ignored_flag():
    from qrank.cli import build_parser
    from qrank.config import IGNORED_VLLM_FLAGS
    from qrank.llm import IGNORED_VLLM_KWARGS

    assert {k.replace("_", "-") for k in IGNORED_VLLM_KWARGS} <= set(IGNORED_VLLM_FLAGS)
    args = []
    for name, takes_value in IGNORED_VLLM_FLAGS.items():
        args += [f"--{name}", "1"] if takes_value else [f"--{name}"]
    ns = build_parser().parse_args(["serve", "m", *args, "--max-num-seqs", "8"])
    assert len(ns.ignored_vllm_flags) == len(IGNORED_VLLM_FLAGS) and ns.max_num_seqs == 8


def test_an_unknown_flag_is_argparse_error_plus_a_hint():
    proc = qrank("serve", "m", "--no-such-flag", "3", timeout=60)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag 3" in proc.stderr
    assert "qrank serve --help" in proc.stderr
    proc = qrank("bench", "throughput", "m", "--num-prompts", "x", timeout=60)
    assert proc.returncode == 2 and "qrank bench throughput --help" in proc.stderr


def test_a_missing_model_says_what_to_do(tmp_path):
    proc = qrank("serve", str(tmp_path / "nope"), timeout=60)
    assert proc.returncode == 1
    assert "no such directory" in proc.stderr and "make-test-model" in proc.stderr


def test_a_hub_id_without_network_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run([sys.executable, "-m", "qrank.cli", "score", "Qwen/No-Such-Model",
                           "q", "d"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "Hugging Face cache" in proc.stderr and "local directory" in proc.stderr


def test_vllm_model_modes_are_what_a_reranker_is_and_others_are_refused(capsys):
    from qrank.cli import build_parser

    ns = build_parser().parse_args(["serve", "m", "--runner", "pooling", "--convert",
                                    "classify", "--task", "score", "--chat-template", "t.jinja"])
    assert (ns.runner, ns.convert, ns.task, ns.chat_template) == (
        "pooling", "classify", "score", "t.jinja")
    for flag, value in (("--runner", "generate"), ("--convert", "embed"), ("--task", "embed")):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["serve", "m", flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"qrank serves rerankers: {flag[2:]} must be one of" in err and repr(value) in err


def test_make_test_model_st_layout_flag(tmp_path, tokenizer_dir):
    from qrank.cli import build_parser

    ns = build_parser().parse_args(["make-test-model", str(tmp_path), "--tokenizer",
                                    str(tokenizer_dir), "--layout", "st"])
    assert ns.layout == "st"


@pytest.mark.parametrize("argv", [
    ["score-file", "in.jsonl", "-o", "out.parquet", "--model", "m", "--ray"],
    ["serve", "m", "--data-parallel-size", "2", "--data-parallel-backend", "ray"],
], ids=["score-file", "serve"])
def test_ray_flags_without_ray_name_the_extra(monkeypatch, capsys, argv):
    from qrank.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    for name in [m for m in sys.modules if m == "qrank.ray" or m.startswith("qrank.ray.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(argv) == 1
    assert "pip install 'qrank[ray]'" in capsys.readouterr().err


def test_serve_data_parallel_needs_the_ray_backend(capsys):
    from qrank.cli import main

    assert main(["serve", "m", "--data-parallel-size", "2"]) == 1
    assert "--data-parallel-backend ray" in capsys.readouterr().err
