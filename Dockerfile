# The orchestrator's own image: `orchestrator serve` with /health and /version, stamped with its commit
# so the orchestrator can deploy itself through its own check_staging_image_fresh gate.
#
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) -t orchestrator:$(git rev-parse HEAD) .
#
# BASE_IMAGE defaults to the public Python image; air-gapped builders pass a local one. Such a base can
# also carry a wheelhouse and set PIP_NO_INDEX=1 / PIP_FIND_LINKS so the install below needs no network.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# The server runs as this unprivileged user, never as root: whoever breaks into the process gets no
# root inside the container (and no root-owned files on a mounted volume). A fixed uid/gid lets
# operators chown volumes and lets `runAsNonRoot`-style policies check it from USER below.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" orchestrator \
 && useradd --system --uid "${APP_UID}" --gid "${APP_UID}" --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin orchestrator \
 && mkdir -p /data && chown "${APP_UID}:${APP_UID}" /data && chmod 0700 /data

WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY orchestrator ./orchestrator
COPY migrations ./migrations
COPY scripts/staging_check.py ./scripts/staging_check.py
RUN python3 -m pip install --no-cache-dir /src && rm -rf /src/build

# Stamped last so that a new commit only rebuilds these thin layers.
ARG GIT_SHA
ARG SOURCE_URL=""
ARG CREATED=""
LABEL org.opencontainers.image.revision=$GIT_SHA \
      org.opencontainers.image.source=$SOURCE_URL \
      org.opencontainers.image.created=$CREATED \
      org.opencontainers.image.title="orchestrator"
ENV ORCH_REVISION=$GIT_SHA \
    PORT=8080 \
    PYTHONUNBUFFERED=1

# Installed as root above (read-only to the server); from here on nothing runs as root.
USER ${APP_UID}:${APP_UID}
WORKDIR /data
EXPOSE 8080
# Loopback by default (host networking must not expose it); set ORCH_SERVE_HOST=0.0.0.0 when publishing.
CMD ["sh", "-c", "exec orchestrator serve --host \"${ORCH_SERVE_HOST:-127.0.0.1}\" --port \"${PORT}\""]
