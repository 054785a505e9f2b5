# A stand-in for rabbitmq:3-management, from Debian's rabbitmq-server
# (scripts/docker-base-images).
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/* \
    && printf 'loopback_users.guest = false\nlog.console = true\nlog.file = false\n' \
        > /etc/rabbitmq/rabbitmq.conf \
    && rabbitmq-plugins enable --offline rabbitmq_management
EXPOSE 5672 15672
CMD ["rabbitmq-server"]
