# syntax=docker/dockerfile:1
# One image for all five TPA services; docker-compose.yml selects the service
# with `command: ["serve", "<name>"]`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tpa
WORKDIR /src
# .dockerignore keeps .venv, .tpa, .git, caches and tests out of the context.
COPY . .
RUN /opt/tpa/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/tpa/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 tpa \
    && useradd --system --uid 10001 --gid tpa --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tpa
COPY --from=build /opt/tpa /opt/tpa
WORKDIR /app
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["tpa"]
CMD ["--help"]
