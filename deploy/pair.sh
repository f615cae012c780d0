#!/usr/bin/env bash
# A primary and a synchronous hot standby on loopback ports, by hand (no Patroni): for the
# failover test and for trying a multi-host DATABASE_URL on one machine.
#
#   deploy/pair.sh start DIR PRIMARY_PORT STANDBY_PORT   # initdb, start, pg_basebackup -R, start
#   deploy/pair.sh kill DIR PORT                          # pg_ctl stop -m immediate (a crash)
#   deploy/pair.sh promote DIR PORT                       # pg_ctl promote
#   deploy/pair.sh stop DIR                               # stop both, remove DIR
#
# DIR/PORT holds each node's data directory. Trust auth on 127.0.0.1 (a test rig, not production:
# see docs/deployment.md). Run as root, the nodes run as the postgres user.
set -euo pipefail
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cmd=$1; dir=$2
case "$cmd" in
start)
  primary=$3; standby=$4
  mkdir -p "$dir"; chown postgres: "$dir" 2>/dev/null || true
  as_postgres "$BIN/initdb" -D "$dir/$primary" -A trust -U postgres --no-sync >/dev/null
  cat >>"$dir/$primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $primary
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 5
hot_standby = on
hot_standby_feedback = on
# A commit is acknowledged only once the standby has it: the loss of the primary loses no
# acknowledged write.
synchronous_standby_names = '*'
synchronous_commit = on
fsync = on
shared_buffers = 64MB
CONF
  echo "host replication postgres 127.0.0.1/32 trust" >>"$dir/$primary/pg_hba.conf"
  as_postgres "$BIN/pg_ctl" -D "$dir/$primary" -l "$dir/$primary.log" -w start >/dev/null
  as_postgres "$BIN/pg_basebackup" -h 127.0.0.1 -p "$primary" -U postgres -D "$dir/$standby" -R -X stream -c fast >/dev/null
  sed -i "s/^port = .*/port = $standby/" "$dir/$standby/postgresql.conf"
  echo "primary_conninfo = 'host=127.0.0.1 port=$primary user=postgres application_name=node$standby'" >>"$dir/$standby/postgresql.auto.conf"
  as_postgres "$BIN/pg_ctl" -D "$dir/$standby" -l "$dir/$standby.log" -w start >/dev/null
  # Ready when the primary sees the standby streaming (synchronous).
  for _ in $(seq 1 100); do
    state=$(as_postgres "$BIN/psql" -h 127.0.0.1 -p "$primary" -U postgres -Atc "SELECT sync_state FROM pg_stat_replication" postgres 2>/dev/null || true)
    [ "$state" = sync ] && exit 0
    sleep 0.1
  done
  echo "the standby did not start streaming" >&2; exit 1 ;;
kill)
  as_postgres "$BIN/pg_ctl" -D "$dir/$3" -m immediate -w stop >/dev/null ;;
promote)
  as_postgres "$BIN/pg_ctl" -D "$dir/$3" -w promote >/dev/null
  # No standby is left to wait for: the new primary commits alone (as Patroni's
  # synchronous_mode does when no standby is healthy, unless synchronous_mode_strict).
  as_postgres "$BIN/psql" -h 127.0.0.1 -p "$3" -U postgres -qAtc "ALTER SYSTEM SET synchronous_standby_names = ''" postgres
  as_postgres "$BIN/psql" -h 127.0.0.1 -p "$3" -U postgres -qAtc "SELECT pg_reload_conf()" postgres >/dev/null ;;
stop)
  for node in "$dir"/*/; do
    [ -f "$node/postmaster.pid" ] && as_postgres "$BIN/pg_ctl" -D "$node" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$dir" ;;
*) echo "usage: $0 start|kill|promote|stop DIR [PORT...]" >&2; exit 2 ;;
esac
