#!/bin/sh
# The cluster profile's standby (docker-compose.yml), on the postgres:15 image or the
# stand-in built here: on its first start a copy of the primary at $POSTGRES_STANDBY_OF
# (pg_basebackup as the superuser, -R: it then follows the primary), which it stays until
# promoted (SELECT pg_promote()). Its arguments are the server's settings.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # the primary may still be starting: the copy is taken once it answers
    until PGPASSWORD="$POSTGRES_PASSWORD" pg_basebackup -h "$POSTGRES_STANDBY_OF" \
            -U postgres -D "$PGDATA" -R -X stream; do
        rm -rf "${PGDATA:?}"/*
        sleep 1
    done
    chmod 700 "$PGDATA"
fi
exec postgres -c listen_addresses='*' "$@"
