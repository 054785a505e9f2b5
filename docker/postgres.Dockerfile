# A stand-in for postgres:15, from Debian's postgresql-15 (scripts/docker-base-images): the
# official image's contract as far as the compose file uses it. On a first start with an
# empty /var/lib/postgresql/data it makes a cluster whose user "postgres" has the password
# POSTGRES_PASSWORD (required), reached from other containers by password only.
FROM debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint.sh"]
CMD ["postgres"]
