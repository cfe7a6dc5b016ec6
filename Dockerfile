# deltafeed as a container: docker build -t deltafeed .
# Runs `deltafeed run` as an unprivileged user, its DuckDB file (or spool, with PostgreSQL) in the
# /var/lib/deltafeed volume, its API on port 8080 (which then needs DELTAFEED_API_TOKEN), JSON logs.
# Every setting is a DELTAFEED_* variable (see docs/deployment.md); compose.yaml shows a service.
#
# Exit codes (for `restart:` policies): 2 = bad settings, do not retry; 69 = a venue or the store is
# unreachable, retry.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# A venv to copy whole into the final image; PostgreSQL and Redis tiers included (extras).
ARG EXTRAS=postgres,redis
RUN python -m venv /opt/deltafeed \
    && /opt/deltafeed/bin/pip install --no-compile ".[${EXTRAS}]" \
    && /opt/deltafeed/bin/deltafeed --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="deltafeed" \
      org.opencontainers.image.description="Candles from venue streams with REST history: stored, served, verified."
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/deltafeed --create-home --shell /usr/sbin/nologin deltafeed
COPY --from=build /opt/deltafeed /opt/deltafeed
ENV PATH=/opt/deltafeed/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DELTAFEED_API=0.0.0.0:8080 \
    DELTAFEED_DB=/var/lib/deltafeed/deltafeed.duckdb \
    DELTAFEED_LOG_FORMAT=json
WORKDIR /var/lib/deltafeed
VOLUME ["/var/lib/deltafeed"]
USER 10001:10001
EXPOSE 8080
# Ready: history bootstrapped, venues connected, store writable. A deep first bootstrap takes a
# while: the start period allows 10 minutes before failures count.
HEALTHCHECK --interval=15s --timeout=6s --start-period=600s --retries=4 \
    CMD ["deltafeed", "status", "--probe", "ready"]
# SIGTERM (docker stop) writes everything out; give it the 10 s stop_grace and more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["deltafeed"]
CMD ["run"]
