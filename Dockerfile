# gradwatch CLI image (used by docker-compose.yml's gradwatch-monitor service).
#
#   docker build -t gradwatch:local .
#   docker run --rm -e MLFLOW_TRACKING_URI=http://host:5000 gradwatch:local monitor --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` reads (.dockerignore keeps the context to these as well).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gradwatch ./gradwatch
RUN pip install . && rm -rf /src

# Run unprivileged; the home directory holds anything the CLI writes (e.g. .gradwatch/).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gradwatch
USER gradwatch
WORKDIR /home/gradwatch

ENTRYPOINT ["gradwatch"]
CMD ["--help"]
