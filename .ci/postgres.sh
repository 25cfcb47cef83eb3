#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the shared-study sweep tests: installs Debian's postgresql if
# missing, makes a cluster in a temporary folder (trust auth, 127.0.0.1 only), starts it and prints
#   export SLIMNLP_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:<port>/slimnlp_test
#   export SLIMNLP_TEST_POSTGRES_DIR=<cluster folder>
# for `eval`. Stop it with: pg_ctl -D "$SLIMNLP_TEST_POSTGRES_DIR" stop (as the cluster's owner).
set -euo pipefail
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
if [ -z "$(pg_bin)" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
fi
BIN="$(pg_bin)"
PORT="${SLIMNLP_TEST_POSTGRES_PORT:-55432}"
DIR="$(mktemp -d /tmp/slimnlp-pg.XXXXXX)"
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"  # postgres refuses to run as root
as_owner "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >&2
as_owner "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR" start >&2
as_owner "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres slimnlp_test >&2
echo "export SLIMNLP_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/slimnlp_test"
echo "export SLIMNLP_TEST_POSTGRES_DIR=$DIR/data"
echo "export SLIMNLP_TEST_POSTGRES_BIN=$BIN"
