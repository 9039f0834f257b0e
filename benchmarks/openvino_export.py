"""The OpenVINO row of ``vs_transformers.py``: the model exported by optimum-intel, its logits
cut to the last position.

    python benchmarks/openvino_export.py models/qwen3-reranker-0.6b results/openvino-0.6b

Export (this file run as a script, in a Python that has optimum-intel): ``OVModelForCausalLM``
with ``export=True`` from the HF-layout checkpoint, as a user of optimum-intel would (stateful:
the keys and values are kept as the model's state), weights not compressed to int8
(``load_in_8bit=False``: optimum-intel would compress models over 1B parameters), saved as
OpenVINO IR with ``export_info.json`` (the versions that made it). optimum-intel 2.2 needs
transformers < 5.6, so it may live in its own virtual environment (docs/performance.md); the
benchmark then only needs the ``openvino`` runtime.

:func:`last_position_logits` inserts a Gather of the last position before ``lm_head``: the
exported graph computes the vocabulary logits of every position (optimum returns them all),
~2x the work of the trunk on the 0.6B shape; with left padding the last position is every
row's last token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IR_FILE = "openvino_model.xml"
INFO_FILE = "export_info.json"


def export(model_dir: str, out_dir: str) -> dict[str, Any]:
    """Export ``model_dir`` with ``OVModelForCausalLM`` into ``out_dir``; returns what it
    records in ``export_info.json``."""
    import openvino
    import transformers
    from optimum.intel import OVModelForCausalLM
    from optimum.intel.version import __version__ as optimum_intel_version

    model = OVModelForCausalLM.from_pretrained(model_dir, export=True, compile=False,
                                               load_in_8bit=False)
    model.save_pretrained(out_dir)
    info = {"model": str(Path(model_dir).resolve()), "stateful": bool(model.stateful),
            "optimum_intel": optimum_intel_version, "openvino": openvino.__version__,
            "transformers": transformers.__version__}
    (Path(out_dir) / INFO_FILE).write_text(json.dumps(info, indent=2))
    return info


def last_position_logits(model: Any) -> Any:
    """Insert a Gather of the last sequence position before the MatMul of ``lm_head`` (the
    first MatMul above the ``logits`` output) of an ``openvino.Model``, in place: logits
    [batch, seq, vocab] become [batch, 1, vocab]. Returns the model."""
    import numpy as np
    from openvino import opset13 as ops

    node = model.output("logits").get_node()
    while node.get_type_name() != "MatMul":
        if node.get_input_size() == 0:
            raise ValueError("no MatMul above the logits output")
        node = node.input_value(0).get_node()
    # the hidden states [batch, seq, hidden]; the other input is the weight
    (port,) = [i for i in node.inputs() if i.get_partial_shape().rank.get_length() == 3]
    hidden = port.get_source_output()
    last = ops.gather(hidden, ops.constant(np.array([-1], dtype=np.int64)),
                      ops.constant(np.int64(1)), name="last_position")
    port.replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return model


def weight_types(model: Any) -> dict[str, int]:
    """How many matrix constants of each element type the IR holds (bf16, f16, f32, i8)."""
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if (op.get_type_name() == "Constant"
                and op.get_output_partial_shape(0).rank.get_length() == 2):
            name = op.get_output_element_type(0).get_type_name()
            counts[name] = counts.get(name, 0) + 1
    return counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an HF-layout checkpoint directory")
    p.add_argument("out", help="where the OpenVINO IR goes")
    ns = p.parse_args()
    print(json.dumps(export(ns.model, ns.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
