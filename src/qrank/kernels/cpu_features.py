"""What this CPU can run, asked before anything is built or packed for it.

torch's cpuinfo checks answer for the instruction sets (they also check that the OS enabled
them, which AMX needs); oneDNN's weight packing is asked directly with a tiny weight, since
which dtypes it packs depends on the CPU and on the oneDNN build (float16 needs AVX512_FP16 or
AVX_NE_CONVERT, bfloat16 AVX-512 or AVX_NE_CONVERT).
"""

from __future__ import annotations

import functools
import platform
from typing import Any

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# the flags benchmarks record: the vector and matrix extensions qrank's and its peers' paths use
RECORDED_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_fp16", "avx_ne_convert",
                  "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


@functools.cache
def cpuinfo_fields() -> dict[str, str]:
    """The first processor's ``/proc/cpuinfo`` fields (``vendor_id``, ``cpu family``,
    ``model``, ...); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (as ``lscpu`` shows it), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_x86() -> bool:
    """An x86-64 CPU."""
    return platform.machine().lower() in ("x86_64", "amd64")


def _torch_check(name: str, flag: str) -> bool:
    """torch's cpuinfo check ``torch.cpu._is_<name>_supported`` where it exists, else the flag."""
    check = getattr(torch.cpu, f"_is_{name}_supported", None)
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:
            return False
    return flag in cpu_flags()


def has_amx_bf16() -> bool:
    """AMX tiles with bfloat16 products (Intel Sapphire Rapids and later), enabled by the OS."""
    return _torch_check("amx_tile", "amx_tile") and (
        "amx_bf16" in cpu_flags() or not cpu_flags())


def has_avx512_bf16() -> bool:
    """AVX-512 with the BF16 dot products (``vdpbf16ps``): AMD Zen 4/5, Intel Cooper Lake on."""
    return _torch_check("avx512_bf16", "avx512_bf16")


def has_avx512() -> bool:
    """AVX-512 F/BW/VL/DQ, what oneDNN's AVX-512 kernels need."""
    return _torch_check("avx512", "avx512bw")


@functools.cache
def onednn_packs(dtype: torch.dtype) -> bool:
    """Whether oneDNN holds a ``dtype`` linear weight prepacked on this CPU (asked with a tiny
    weight: it refuses half-precision types the CPU cannot convert natively; float32 it packs
    wherever it runs)."""
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(32, 32, dtype=dtype), 16)
    except RuntimeError:
        return False
    return True


def describe() -> dict[str, Any]:
    """The CPU as benchmarks record it: model name, vendor, family and model number, the
    recorded flags as ``/proc/cpuinfo`` lists them, torch's vector capability, the checks
    that choose qrank's paths, and what oneDNN packs."""
    fields = cpuinfo_fields()
    return {
        "model": cpu_model(),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "family": fields.get("cpu family"),
        "model_number": fields.get("model") or fields.get("CPU part"),
        "machine": platform.machine(),
        "flags": {flag: flag in cpu_flags() for flag in RECORDED_FLAGS},
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": has_amx_bf16(),
        "avx512_bf16": has_avx512_bf16(),
        "avx512": has_avx512(),
        "avx2": _torch_check("avx2", "avx2"),
        "onednn_packs_bf16": onednn_packs(torch.bfloat16),
        "onednn_packs_fp16": onednn_packs(torch.float16),
        "onednn_packs_fp32": onednn_packs(torch.float32),
    }
