# ftvar image: `docker build -t ftvar:latest .`, then
#   docker run --rm --gpus all -v "$PWD/outputs:/outputs" ftvar:latest launch smoke --executor local
# BASE must provide Python >= 3.11 on PATH with torch installed (the official PyTorch CUDA runtime image
# does); torch is then never reinstalled. It must be torch >= 2.6 (pyproject's floor: transformers 5 disables
# an older torch). CUDA 12.8 runs on drivers >= 570 and on H100/H200. CI builds it on a local CPU-only base
# (containers/build-image.sh).
ARG BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

# pip settings for the build only, e.g. a mirror or a proxy CA (containers/lib.sh mounts such a pip.conf)
ARG PIP_CONFIG_FILE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# a non-root user (uid 1000 by default: files written to a bind-mounted /outputs belong to the host's
# first user; a base image's own user with that uid, e.g. `ubuntu`, is replaced)
ARG UID=1000
RUN if existing=$(getent passwd "${UID}" | cut -d: -f1) && [ -n "${existing}" ]; then userdel -r "${existing}"; fi \
    && useradd --create-home --no-log-init --shell /bin/bash --uid "${UID}" ftvar \
    && install -d -m 1777 /outputs /cache /cache/hf

# 1. the dependencies: they change only with pyproject.toml, so a code change reuses this layer
WORKDIR /tmp/ftvar-src
COPY pyproject.toml containers/requirements.py ./
RUN python requirements.py . \
    && pip install --no-cache-dir -r requirements.txt -c constraints.txt

# 2. the code (no dependencies resolved again: they are all installed above)
COPY README.md ./
COPY ftvar ./ftvar
RUN pip install --no-cache-dir --no-deps . \
    && ftvar --version \
    && python -c "import ftvar.train" \
    && rm -rf /tmp/ftvar-src

# the image's name, written into every record's environment.container_image
ARG IMAGE_NAME=ftvar:latest
ARG VERSION=0.2.0
ARG SOURCE=https://github.com/ftvar/ftvar
LABEL org.opencontainers.image.title="ftvar" \
      org.opencontainers.image.description="Fine-tuning variability studies: hyperparameter sweeps, JSON records, regression reports" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.ref.name="${IMAGE_NAME}"
# no secret here: hadolint's DL3064 matches "TOKEN" in TOKENIZERS_PARALLELISM
# hadolint ignore=DL3064
ENV FTVAR_CONTAINER_IMAGE=${IMAGE_NAME} \
    HF_HOME=/cache/hf \
    TOKENIZERS_PARALLELISM=false \
    MPLCONFIGDIR=/tmp/matplotlib

# the Hugging Face cache (mount the host's prefetched cache here) and the outputs (records, logs)
VOLUME ["/cache/hf", "/outputs"]
USER ${UID}
# `ftvar --out` defaults to ./outputs, i.e. /outputs
WORKDIR /
ENTRYPOINT ["ftvar"]
CMD ["--help"]
