# A stand-in for redis:7, from Debian's redis-server (scripts/docker-base-images). Give it
# `--protected-mode no` (the official image's entrypoint does): other containers connect.
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
