# horizon-sidecar: the sidecar proxy as a container image.
#
#   docker build -t horizon-sidecar:0.1.0 .
#   docker run --rm -p 15000:15000 -v "$PWD/my-sidecar.yaml:/etc/sidecar/sidecar.yaml:ro" horizon-sidecar:0.1.0
#
# The config is read from /etc/sidecar/sidecar.yaml (in Kubernetes: a ConfigMap mounted on /etc/sidecar,
# see deploy/kubernetes/). The image ships config/minimal.yaml there as a default so that it starts alone,
# and every example of config/ under /usr/share/horizon-sidecar/examples/.
# Kubernetes ignores HEALTHCHECK; its probes (deploy/kubernetes/deployment.yaml) hit the same endpoints.
# Builder: compiles the request path with mypyc (docs/decisions/0008) into a wheel; needs a C compiler,
# which the runtime image does not carry.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# README.md is copied because pyproject.toml names it as the readme; buildsys/ is the build backend, which
# gives the isolated build environment mypy and the runtime dependencies that mypyc type-checks against.
COPY pyproject.toml setup.py README.md /src/
COPY buildsys/ /src/buildsys/
COPY proxy/ /src/proxy/
RUN HORIZON_SIDECAR_COMPILE=1 pip wheel --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="horizon-sidecar" \
      org.opencontainers.image.description="A service-mesh sidecar proxy in Python: routing, splits, resilience, admin and metrics." \
      org.opencontainers.image.version="${VERSION}" \
      io.horizon.sidecar.config="/etc/sidecar/sidecar.yaml" \
      io.horizon.sidecar.admin-port="15000"

# No .pyc writes at run time (the root filesystem is read-only in Kubernetes: pip compiled them at
# install time); logs go straight to stderr; pip stays quiet about its own version.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The compiled wheel from the builder; every dependency (uvloop, httptools, pydantic-core, cryptography,
# aiohttp) has a manylinux wheel for CPython 3.11.
COPY --from=build /wheels/ /tmp/wheels/
COPY config/ /usr/share/horizon-sidecar/examples/
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
 && rm -rf /tmp/wheels \
 && mkdir -p /etc/sidecar \
 && cp /usr/share/horizon-sidecar/examples/minimal.yaml /etc/sidecar/sidecar.yaml \
 && groupadd --system --gid 1337 sidecar \
 && useradd --system --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin sidecar

# Numeric uid:gid (Istio's proxy uid): Kubernetes' runAsNonRoot can only verify a numeric USER.
USER 1337:1337

# 15000 admin (/live /ready /metrics /shutdown ...), 15001 outbound listener, 15006 inbound listener.
EXPOSE 15000 15001 15006

# SIGTERM starts the drain (/ready 503, finish in-flight up to drain_timeout, exit 0); SIGHUP asks for a
# config reload. The sidecar is PID 1 itself (exec-form ENTRYPOINT, no shell in between), so signals reach
# Python directly. As PID 1 the kernel applies no default action: only signals the sidecar handles act.
STOPSIGNAL SIGTERM

# No curl in the slim image: python's urllib, with proxies disabled so an HTTP_PROXY in the environment
# cannot send the check through the sidecar's own listener. Any error or non-2xx status exits non-zero.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:15000/live', timeout=2)"]

ENTRYPOINT ["sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.yaml"]
