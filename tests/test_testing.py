"""qrank.testing draws its random weights cheaply, and as it always has for a given seed."""

import torch

from qrank.testing import (
    CALIBRATION_PAIRS,
    calibration_plan,
    draw_weights,
    make_config,
    weight_specs,
)


def test_weights_are_the_float32_draws_rounded_to_bfloat16():
    """Drawing in bfloat16 in place gives the values the float32 draw (randn * std + mean, then
    rounded) gave: tiny checkpoints, and the tests' expectations on them, do not change."""
    config = make_config("tiny", "original", "float32")
    g = torch.Generator().manual_seed(7)
    drawn = draw_weights(config, 7)
    for (name, shape, std, mean), (got_name, got) in zip(weight_specs(config), drawn,
                                                          strict=True):
        want = torch.randn(*shape, generator=g).mul_(std).add_(mean).to(torch.bfloat16)
        assert got_name == name and got.dtype == torch.float32
        assert torch.equal(got, want.float()), name


def test_rows_replace_drawn_rows():
    config = make_config("tiny", "original", "bfloat16")
    row = torch.full((config["hidden_size"],), 0.5, dtype=torch.bfloat16)
    rows = {"model.embed_tokens.weight": {9693: row}}
    name, embed = next(draw_weights(config, 0, torch.bfloat16, rows))
    assert name == "model.embed_tokens.weight" and torch.equal(embed[9693], row)


def test_real_shapes_calibrate_in_one_round_over_the_calibration_pairs():
    rounds, pairs = calibration_plan(make_config("0.6b", "original", "bfloat16"))
    assert (rounds, pairs) == (1, CALIBRATION_PAIRS)
    rounds, pairs = calibration_plan(make_config("tiny", "original", "float32"))
    assert rounds == 3 and len(pairs) == 6 * len(CALIBRATION_PAIRS)


def test_written_weights_are_readable_by_other_users(tiny_model):
    """safetensors writes 0600; a model served by another user (systemd's User=) must read it."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for f in tiny_model.glob("*.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask
