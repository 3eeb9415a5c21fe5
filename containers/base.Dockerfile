# The local base image for CI (see containers/build-base.sh): what the official PyTorch image gives
# users -- a Python >= 3.11 on PATH with torch installed -- but CPU-only and built without a registry.
ARG ROOTFS=localhost/ftvar-rootfs:bookworm
FROM ${ROOTFS}
ARG TORCH_WHEEL
# pip settings for the build only (containers/lib.sh mounts a pip.conf with the CI proxy CA and local indexes)
ARG PIP_CONFIG_FILE
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch's own dependencies (sympy, networkx, jinja2, ...) come from PyPI
RUN --mount=type=bind,source=.,target=/wheels \
    python3 -m venv /opt/venv \
    && pip install --no-cache-dir "/wheels/${TORCH_WHEEL}" \
    && python -c "import torch; print('torch', torch.__version__)"
CMD ["/bin/bash"]
