# Studbook server image: one image, four roles. The role is the first argument, e.g.
#   docker run --rm studbook api --host 0.0.0.0     (see docker-compose.yml for a full deployment)
# All configuration comes from STUDBOOK_* environment variables at run time; nothing secret is
# baked into the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Build from a throwaway source folder: a regular (non-editable) install copies everything the
# services need, including schema/ (as studbook_server/_schema), into site-packages.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schema/ schema/
COPY sdk/ sdk/
COPY services/ services/
RUN pip install ".[server]" \
    && rm -rf /src

# Run as an unprivileged user with a fixed numeric id (so `runAsNonRoot` policies can check it).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/studbook \
        --shell /usr/sbin/nologin studbook
USER 10001:10001
WORKDIR /home/studbook

# api: 8080, ingest: 8081 (GET /healthz, GET /readyz on both). projector and migrate serve nothing.
EXPOSE 8080 8081

ENTRYPOINT ["studbook-server"]
CMD ["--help"]
