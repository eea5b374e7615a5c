#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 on 127.0.0.1 as the `postgres` user and
# prints the admin URL the tests use. Usage: eval "$(.ci/postgres.sh)"
set -euo pipefail
port=${PGPORT_TEST:-54329}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data=$(mktemp -d /tmp/changegate-pg.XXXXXX)
chown postgres:postgres "$data"
runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres --no-sync >/dev/null
# Settings go into the config file, so a plain `pg_ctl start` after a stop
# (the database-restart test does that) comes back on the same port.
cat >> "$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
fsync = on
max_connections = 200
CONF
runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
echo "export CHANGEGATE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
echo "export CHANGEGATE_TEST_PGDATA=$data"
echo "export CHANGEGATE_TEST_PGBIN=$bin"
