# qrank on the CPU: `docker build -t qrank .`, then
#   docker run -p 8000:8000 -v ~/.cache/huggingface:/root/.cache/huggingface qrank Qwen/Qwen3-Reranker-0.6B
# serves as `qrank serve` does (docs/deployment.md). tests/test_dockerfile.py checks this file
# against the README.
FROM python:3.11-slim

# g++ builds qrank's CPU kernels and torch.compile's element-wise graphs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    QRANK_KERNEL_CACHE=/opt/qrank/kernels

# torch first, from the CPU index: the default index would pull the CUDA wheels (several GB).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/qrank/src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install .

# Build the CPU kernels now, so the first request never waits for a compiler. Each load()
# returns None without compiling where this CPU lacks AMX; the server then builds nothing
# (or builds them at its first start, if it runs on a CPU with AMX).
RUN python -c 'from qrank.kernels import amx_linear, cpu_attention; amx_linear.load(); cpu_attention.load()'

WORKDIR /
EXPOSE 8000
ENTRYPOINT ["qrank", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["Qwen/Qwen3-Reranker-0.6B"]
