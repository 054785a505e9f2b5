FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY saga ./saga
COPY saga_store ./saga_store
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY web ./web
RUN pip install --no-cache-dir ".[flower]" && useradd --create-home saga && mkdir /data && chown saga /data
USER saga
ENV SAGA_DATA_DIR=/data
CMD ["saga", "--help"]
