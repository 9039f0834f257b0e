"""Why a kernel test skips: the kernel needs a CPU feature or a compiler this machine lacks."""

from qrank.kernels import cpu_features


def kernel_unavailable(kernel: str) -> str:
    """The skip reason for ``kernel``, naming this CPU and what it lacks."""
    if not cpu_features.has_amx_bf16():
        return f"{kernel}: needs AMX (amx_bf16); this CPU ({cpu_features.cpu_model()}) has none"
    return f"{kernel}: could not be built here (a C++ compiler and ninja are needed)"
