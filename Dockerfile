# syntax=docker/dockerfile:1
# nexus-audit: the `serve` service in a slim image.
#
#   docker build -t nexus-audit .
#   docker run -d -p 127.0.0.1:9747:9747 -v nexus-audit-data:/data \
#     -v /path/to/key:/run/secrets/cloudnexus:ro -e NEXUS_API_KEY_FILE=/run/secrets/cloudnexus \
#     nexus-audit
#
# The install step is the README's (`python -m venv` + `pip install .` from this
# pyproject.toml); tests/test_dockerfile.py keeps the two the same and runs hadolint.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with nexus-audit and its dependencies ------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nexus_audit ./nexus_audit
COPY queries ./queries
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install . \
    && /opt/venv/bin/nexus-audit --version

# ---- runtime: the venv only; no compiler, no build dependencies, not root ------------
FROM ${PYTHON_IMAGE}
# serve listens on loopback by default; in a container it must listen on all interfaces
# for the published port (and Prometheus) to reach it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NEXUS_AUDIT_DB=/data/nexus-audit.duckdb \
    NEXUS_AUDIT_LISTEN=0.0.0.0:9747
RUN groupadd --system --gid 10001 nexus \
    && useradd --system --uid 10001 --gid nexus --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin nexus \
    && mkdir /data \
    && chown nexus:nexus /data
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /data
# The history database lives here: keep it on a volume.
VOLUME ["/data"]
EXPOSE 9747
# /healthz needs no credentials even when bearer or basic auth guards the other paths.
# Plain HTTP: with TLS configured in the config file, replace this check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('NEXUS_AUDIT_LISTEN', '0.0.0.0:9747').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
CMD ["nexus-audit", "serve"]
