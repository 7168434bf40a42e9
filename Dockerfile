# Two images from one MLflow pin (constraints/mlflow-newest.txt, the version CI tests with),
# so the tracking server, gradwatch's client and the tests never disagree on MLflow:
#
#   docker build --target mlflow-server -t gradwatch-mlflow:local .   # docker-compose's `mlflow`
#   docker build -t gradwatch:local .                                 # the gradwatch CLI
#   docker run --rm -e MLFLOW_TRACKING_URI=http://host:5000 gradwatch:local monitor --help

# -- the MLflow tracking server: MLflow with its PostgreSQL driver and auth app -------------
FROM python:3.11-slim AS mlflow-server

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY constraints/mlflow-newest.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "mlflow[auth]" psycopg2-binary && rm /tmp/constraints.txt

# Unprivileged; the artifact volume's mount point belongs to that user (a fresh named volume
# takes the ownership of the image's directory).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlflow \
    && mkdir /mlartifacts && chown mlflow /mlartifacts
USER mlflow
WORKDIR /home/mlflow

# -- gradwatch's CLI (the `gradwatch-monitor` service) --------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what `pip install .` reads (.dockerignore keeps the context to these as well).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/mlflow-newest.txt ./constraints/
COPY gradwatch ./gradwatch
RUN pip install -c constraints/mlflow-newest.txt . && rm -rf /src

# Run unprivileged; the home directory holds anything the CLI writes (e.g. .gradwatch/).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gradwatch
USER gradwatch
WORKDIR /home/gradwatch

ENTRYPOINT ["gradwatch"]
CMD ["--help"]
