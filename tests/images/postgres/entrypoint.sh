#!/bin/bash
# Entrypoint of the dso Postgres test image (a test fixture built from Debian packages by
# tests/support/images.rs; see tests/README.md).
#
# First start: creates a cluster in $PGDATA whose superuser ($POSTGRES_USER, default postgres)
# has the password from POSTGRES_PASSWORD or from the file named by POSTGRES_PASSWORD_FILE (read
# while still root, so a 0400 file injected by dso works). Optional POSTGRES_DB is created too.
# Every start: listens on 0.0.0.0:5432 with scram-sha-256 password auth, runs as the postgres
# user, and turns SIGTERM (docker stop) into Postgres's fast shutdown (SIGINT).
# Health: `pg_isready` in the image's HEALTHCHECK; a TCP probe of 5432 also works once the
# server is up.
set -euo pipefail

PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

die() {
  echo "dso-test-postgres: $*" >&2
  exit 1
}

# Runs a command as the postgres user, or as is when already not root.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

# Prints the initial password. The value only travels through a pipe, never a file.
initial_password() {
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ] && [ -n "${POSTGRES_PASSWORD:-}" ]; then
    die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"
  fi
  local password
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    [ -r "$POSTGRES_PASSWORD_FILE" ] || die "cannot read POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE"
    password=$(cat -- "$POSTGRES_PASSWORD_FILE")
  elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
    password=$POSTGRES_PASSWORD
  else
    die "no password: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE"
  fi
  # LIMITATION: one-line passwords only — initdb reads the first line of --pwfile [setting the
  # password with ALTER ROLE over the local socket after initdb would lift it].
  case $password in
    *$'\n'*) die "the password has a line break inside; initdb reads only the first line" ;;
  esac
  printf '%s\n' "$password"
}

# Creates the cluster in an empty $PGDATA.
initialise() {
  # initdb reopens its --pwfile by name. A pipe made by root cannot be reopened by the postgres
  # user, so the postgres-side shell copies it into a pipe of its own.
  initial_password | as_postgres bash -c 'exec initdb --pwfile=<(cat) "$@"' initdb \
    --pgdata="$PGDATA" --username="${POSTGRES_USER:-postgres}" --auth-local=peer \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-locale >/dev/null
  {
    echo "host all all 0.0.0.0/0 scram-sha-256"
    echo "host all all ::/0 scram-sha-256"
  } >> "$PGDATA/pg_hba.conf"

  if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"${POSTGRES_DB//\"/\"\"}\";" \
      | as_postgres postgres --single -D "$PGDATA" -j postgres >/dev/null
  fi
  echo "dso-test-postgres: cluster created in $PGDATA" >&2
}

if [ "${1:-}" != --serve ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialise
  fi
  unset POSTGRES_PASSWORD
  if [ "$(id -u)" = 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" --serve "$@"
  fi
  exec "$0" --serve "$@"
fi
shift

# This shell stays PID 1 so it can translate signals: Postgres treats SIGTERM as a "smart"
# shutdown that waits for every client, which would stall `docker stop` and rotations.
postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@" &
server=$!
trap 'kill -INT "$server" 2>/dev/null' TERM INT
trap 'kill -HUP "$server" 2>/dev/null' HUP
trap 'kill -QUIT "$server" 2>/dev/null' QUIT

while :; do
  status=0
  wait "$server" || status=$?
  kill -0 "$server" 2>/dev/null || exit "$status"
done
