import json
import subprocess
import sys


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
