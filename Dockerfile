# syntax=docker/dockerfile:1
# One image for every service: `afterglow serve <service>` runs one (SERVICE_ROLE picks
# api or worker), `afterglow migrate <service>` is the migration Job. See deploy/README.md.

# --- builder: uv installs the locked workspace into /app/.venv -------------------------
FROM python:3.11-slim-bookworm AS builder
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
# copy mode: the venv must not hold links into uv's cache, which stays in this stage;
# no python download: the venv uses the base image's interpreter, identical in both stages
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, in their own layer: a source change does not reinstall them.
COPY pyproject.toml uv.lock ./
COPY libs/ libs/
COPY services/ services/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --all-packages --no-dev --no-editable --no-install-workspace \
 && uv sync --locked --all-packages --no-dev --no-editable

# --- runtime: the venv, the interpreter, nothing to build with ----------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 afterglow \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin afterglow
COPY --from=builder --chown=0:0 /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
WORKDIR /app
# Numeric user, so that Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# Liveness only (/healthz checks nothing shared); Kubernetes uses its own probes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# uvicorn runs inside `afterglow serve` with proxy headers on (FORWARDED_ALLOW_IPS says
# whom to trust) and one worker process: scale with replicas, not processes.
ENTRYPOINT ["afterglow"]
CMD ["--help"]
