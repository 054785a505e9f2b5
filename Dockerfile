FROM python:3.11-slim
# scripts/docker-images removes the untagged images a rebuild leaves, by this label
LABEL org.order-saga.image="order-saga"
WORKDIR /app
# Dependencies first, from pyproject.toml alone (the packages as empty stubs), so that a
# change to the code rebuilds only the last layers, not every dependency.
COPY pyproject.toml README.md ./
RUN for p in saga_core saga_store workers saga_faults orchestrator saga_app order_app saga_tools; do \
        mkdir "$p" && touch "$p/__init__.py"; done \
    && pip install --no-cache-dir ".[flower,postgres]" && pip uninstall -y -q order-saga \
    && rm -rf saga_core saga_store workers saga_faults orchestrator saga_app order_app \
        saga_tools build *.egg-info
COPY saga_core ./saga_core
COPY saga_store ./saga_store
COPY workers ./workers
COPY saga_faults ./saga_faults
COPY orchestrator ./orchestrator
COPY saga_app ./saga_app
COPY order_app ./order_app
COPY saga_tools ./saga_tools
RUN pip install --no-cache-dir --no-deps . && rm -rf build *.egg-info \
    && useradd --create-home saga && mkdir /data /secrets && chown saga /data /secrets
USER saga
ENV SAGA_DATA_DIR=/data
CMD ["saga", "--help"]
