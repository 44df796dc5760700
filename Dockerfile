# syntax=docker/dockerfile:1
# The lakehouse image: `lakehouse serve` by default, `lakehouse worker` for job workers.
# Build: docker build -t lakehouse:$(git describe --always) .
# Configuration comes only from outside: LAKEHOUSE_* variables, *_FILE secrets, a mounted
# config file (LAKEHOUSE_CONFIG_FILE). Nothing secret is baked in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a venv with the service and its dependencies -----------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lakehouse
WORKDIR /src
# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY gen/ gen/
COPY cmd/ cmd/
COPY lakehouse/ lakehouse/
RUN /opt/lakehouse/bin/pip install --no-compile . \
 && /opt/lakehouse/bin/python -m compileall -q /opt/lakehouse/lib

# --- runtime: the venv on a slim base, as a non-root user ------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lakehouse" \
      org.opencontainers.image.description="gRPC service for Apache Iceberg tables on S3-compatible storage" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 lakehouse \
 && useradd --system --uid 10001 --gid lakehouse --home-dir /var/lib/lakehouse \
      --shell /usr/sbin/nologin lakehouse \
 && mkdir -p /var/lib/lakehouse \
 && chown lakehouse:lakehouse /var/lib/lakehouse
COPY --from=build /opt/lakehouse /opt/lakehouse
ENV PATH=/opt/lakehouse/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LAKEHOUSE_DATA_DIR=/var/lib/lakehouse
# The data dir holds the embedded default's catalog and warehouse, and spill files of SQL
# jobs: mount a volume there (an emptyDir under Kubernetes, with a read-only root).
VOLUME ["/var/lib/lakehouse"]
WORKDIR /var/lib/lakehouse
USER 10001:10001
# gRPC (all services, health, reflection) and the sidecar HTTP port (/metrics, /healthz, /readyz).
EXPOSE 50051 9180
# `lakehouse health` picks the check from the container's own settings: the gRPC health
# service on the local gRPC port, as Kubernetes' grpc probes see it; the sidecar's /healthz
# (HTTPS if it has TLS) when the container runs `lakehouse worker` (no gRPC port) or the gRPC
# port has TLS (a gRPC check would need the CA, the server's name and, with mTLS, a client
# certificate). Explicit --target/--service/--tls flags keep a gRPC check.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["lakehouse", "health", "--timeout", "4"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["lakehouse"]
CMD ["serve"]
