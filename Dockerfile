FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY saga_core ./saga_core
COPY saga_store ./saga_store
COPY workers ./workers
COPY saga_faults ./saga_faults
COPY orchestrator ./orchestrator
COPY saga_tools ./saga_tools
RUN pip install --no-cache-dir ".[flower]" && useradd --create-home saga && mkdir /data && chown saga /data
USER saga
ENV SAGA_DATA_DIR=/data
CMD ["saga", "--help"]
