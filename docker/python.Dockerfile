# A stand-in for python:3.11-slim, from Debian's python3.11 (scripts/docker-base-images).
FROM debian:bookworm
ENV SSL_CERT_FILE=/etc/ssl/host-ca.crt PIP_CERT=/etc/ssl/host-ca.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.crt PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
