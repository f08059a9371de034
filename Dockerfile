# The image of the offline pipeline and the services (CPU by default; GPU: TORCH_INDEX below).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY leadre_model leadre_model
COPY services services
COPY leadre leadre
# The CPU wheel of torch 2.13.0 by default (PyPI's default would pull a multi-GB CUDA
# build); the GPU image (deploy/k8s-gpu, docs/gpu.md) takes the CUDA one:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t leadre:gpu .
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX} \
    && pip install --no-cache-dir .
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ENTRYPOINT ["leadre"]
