"""Checkpoint formats, head construction, hf_overrides, dtypes and shards."""

import json

import pytest
import torch
from inputs import DOCUMENTS, QUERIES
from kernel_skips import kernel_unavailable

from qrank import EngineArgs, Reranker
from qrank.kernels.packed_linear import LINEARS, packs_float32
from qrank.models.loader import ModelNotFoundError, resolve_model_path
from qrank.models.registry import load_model, resolve_dtype

RECIPE_OVERRIDES = {
    "architectures": ["Qwen3ForSequenceClassification"],
    "classifier_from_token": ["no", "yes"],
    "is_original_qwen3_reranker": True,
}


def scores(model_dir, **kwargs) -> list[float]:
    reranker = Reranker(str(model_dir), dtype="float32", **kwargs)
    return [s for q in QUERIES[:3] for s in reranker.score(q, DOCUMENTS[:8])]


def close(a, b, tol=1e-5) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol


@pytest.fixture(scope="module")
def original_scores(tiny_model):
    return scores(tiny_model)


def test_head_is_yes_minus_no_in_float32_and_no_vocabulary_projection(tiny_model):
    loaded = load_model(EngineArgs(str(tiny_model), dtype="bfloat16"))
    assert loaded.head.weight.dtype == torch.float32
    assert loaded.head.weight.shape == (64,)
    assert loaded.trunk.dtype == torch.bfloat16
    names = [n for n, _ in loaded.trunk.named_parameters()]
    assert not any("lm_head" in n for n in names)
    # the only [vocab, hidden] tensor kept is the input embedding table
    big = [n for n, p in loaded.trunk.named_parameters() if p.shape[0] == 151669]
    assert big == ["embed.weight"]
    from safetensors import safe_open

    with safe_open(tiny_model / "model.safetensors", "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight").float()
    assert torch.allclose(loaded.head.weight, emb[9693] - emb[2152])


def test_recipe_hf_overrides_give_the_same_model(tiny_model, original_scores):
    assert close(scores(tiny_model, hf_overrides=RECIPE_OVERRIDES), original_scores, 1e-7)


def test_converted_seq_cls_checkpoints_score_the_same(model_factory, original_scores):
    one_logit = model_factory(fmt="seq-cls")
    two_way = model_factory(fmt="seq-cls-2way")
    config = json.loads((one_logit / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert close(scores(one_logit), original_scores)
    assert close(scores(two_way), original_scores)


def test_untied_embeddings_take_the_rows_from_lm_head(model_factory):
    from reference import CardReference

    untied = model_factory(tie_word_embeddings=False)
    config = json.loads((untied / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    ref = CardReference(untied)
    want = [s for q in QUERIES[:3] for s in ref.score(q, DOCUMENTS[:8])]
    assert close(scores(untied), want)


def test_sharded_safetensors_load(model_factory, tiny_model, original_scores):
    sharded = model_factory(shards=3)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert not (sharded / "model.safetensors").exists()
    assert close(scores(sharded), original_scores, 1e-7)


def test_dtype_auto_and_explicit():
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.bfloat16, torch.float32)


def test_float16_runs(tiny_model, original_scores):
    reranker = Reranker(str(tiny_model), dtype="float16")
    got = reranker.score(QUERIES[0], DOCUMENTS[:8])
    assert close(got, original_scores[:8], 5e-2)


def test_missing_models_get_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="local directory"):
        resolve_model_path("Qwen/Qwen3-Reranker-0.6B")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_hub_cache_is_used(tmp_path, monkeypatch, tiny_model):
    """A model in the Hugging Face cache layout resolves by its Hub id, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = tmp_path / "hub"
    snap = hub / "models--Qwen--Qwen3-Reranker-0.6B" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in tiny_model.iterdir():
        (snap / f.name).symlink_to(f)
    refs = hub / "models--Qwen--Qwen3-Reranker-0.6B" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hub))
    assert resolve_model_path("Qwen/Qwen3-Reranker-0.6B") == snap


def test_unsupported_architecture_is_refused(tmp_path, tiny_model):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_model.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    config = json.loads((tiny_model / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    config["model_type"] = "llama"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model"):
        load_model(EngineArgs(str(bad)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="no CUDA device"):
        load_model(EngineArgs(str(tiny_model), device="cuda"))


@pytest.mark.parametrize("option", ["compile", "cpu_attention_kernel"])
def test_auto_options_are_for_real_sized_models_on_cpu(option):
    def resolved(hidden_size: int, **kwargs) -> bool:
        return getattr(EngineArgs("m", **kwargs), f"resolved_{option}")(hidden_size)

    assert resolved(1024) is True
    assert resolved(64) is False
    assert resolved(4096, device="cuda") is False
    assert resolved(64, **{option: "on"}) is True
    assert resolved(4096, **{option: False}) is False
    with pytest.raises(ValueError, match=option):
        EngineArgs("m", **{option: "sometimes"})


def test_the_amx_linear_kernel_is_on_for_real_sized_models_on_the_cpu():
    args = EngineArgs("m")
    assert args.resolved_cpu_linear_kernel(1024) is True
    assert args.resolved_cpu_linear_kernel(64) is False
    assert EngineArgs("m", device="cuda").resolved_cpu_linear_kernel(1024) is False
    assert EngineArgs("m", cpu_linear_kernel="on").resolved_cpu_linear_kernel(64) is True
    assert EngineArgs("m", cpu_linear_kernel="off").resolved_cpu_linear_kernel(1024) is False
    assert EngineArgs("m", cpu_linear_kernel=True).cpu_linear_kernel == "on"
    with pytest.raises(ValueError, match="cpu_linear_kernel"):
        EngineArgs("m", cpu_linear_kernel="sometimes")


def test_the_amx_linear_kernel_leaves_int8_and_unfit_models_on_their_path(tiny_model):
    """int8 layers stay int8 (the kernel would multiply them in bf16), and a float32 model or
    one whose sizes are not multiples of 32 keeps its linear layers."""
    from qrank.kernels import amx_linear
    from qrank.models.quant import Int8Linear

    if amx_linear.load() is None:
        pytest.skip(kernel_unavailable("the AMX linear kernel"))
    quantized = load_model(EngineArgs(str(tiny_model), dtype="bfloat16", quantization="int8"))
    assert not quantized.trunk.use_fused_gate_up()
    assert isinstance(quantized.trunk.layers[0].gate_up, Int8Linear)
    fp32 = load_model(EngineArgs(str(tiny_model), dtype="float32"))
    assert not fp32.trunk.use_fused_gate_up()
    tiny = load_model(EngineArgs(str(tiny_model), dtype="bfloat16"))
    assert tiny.trunk.use_fused_gate_up()  # tiny's sizes are multiples of 32
    assert tiny.trunk.kernels_in_use()["fused_gate_up"]
    assert isinstance(tiny.trunk.layers[0].gate_up, amx_linear.AmxGateUpSiLU)
    assert not isinstance(tiny.trunk.layers[0].qkv, amx_linear.AmxLinear)


def test_a_float32_trunk_says_it_runs_no_kernel(tiny_model):
    """What benchmarks record of a plain float32 load: no CPU kernel, nothing compiled, the
    linear weights packed only where float32 is (x86 without AVX-512)."""
    trunk = load_model(EngineArgs(str(tiny_model), dtype="float32")).trunk
    packed = len(LINEARS) * trunk.shape.num_layers if packs_float32() else 0
    assert trunk.kernels_in_use() == {"dtype": "float32", "cpu_attention_kernel": False,
                                      "fused_gate_up": False, "packed_linears": packed,
                                      "compiled": False}
