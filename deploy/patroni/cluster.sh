#!/usr/bin/env bash
# A Patroni cluster on loopback ports: one etcd, two (or three) Postgres nodes managed by Patroni
# with synchronous replication, and HAProxy in front (its port always reaches the primary).
# For the high-availability test and for trying failover on one machine; the production
# recipe is docs/deployment.md (same settings, one node per machine, three etcd members).
#
#   deploy/patroni/cluster.sh start DIR BASE [NODES]  # etcd BASE, BASE+1; node i: Postgres BASE+10+i,
#                                                     # REST API BASE+20+i; HAProxy BASE+30 (primary)
#   deploy/patroni/cluster.sh primary DIR             # prints the primary's Postgres port
#   deploy/patroni/cluster.sh crash DIR PORT          # the node of Postgres PORT dies (Patroni
#                                                     # SIGKILLed, Postgres stopped -m immediate)
#   deploy/patroni/cluster.sh stop DIR                # stops everything, removes DIR
#
# Run as root, Patroni and Postgres run as the postgres user. Trust auth on 127.0.0.1: a rig.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cmd=$1; dir=$2
case "$cmd" in
start)
  base=$3; nodes=${4:-2}
  mkdir -p "$dir"; chown postgres: "$dir" 2>/dev/null || true
  as_postgres etcd --name etcd0 --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$base" --advertise-client-urls "http://127.0.0.1:$base" \
    --listen-peer-urls "http://127.0.0.1:$((base + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 1))" \
    --initial-cluster "etcd0=http://127.0.0.1:$((base + 1))" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
  backends=""
  for i in $(seq 1 "$nodes"); do
    pg=$((base + 10 + i)); api=$((base + 20 + i))
    sed -e "s|@NAME@|node$i|g" -e "s|@DIR@|$dir|g" -e "s|@PG@|$pg|g" -e "s|@API@|$api|g" -e "s|@ETCD@|127.0.0.1:$base|g" -e "s|@BIN@|$BIN|g" \
      "$here/node.yml" >"$dir/node$i.yml"
    chown postgres: "$dir/node$i.yml" 2>/dev/null || true
    as_postgres patroni "$dir/node$i.yml" >"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    backends="$backends    server node$i 127.0.0.1:$pg maxconn 200 check port $api\n"
    # The first node bootstraps the cluster before the others join.
    if [ "$i" = 1 ]; then
      for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$api/primary" >/dev/null 2>&1 && break; sleep 0.1; done
    fi
  done
  sed -e "s|@DIR@|$dir|g" -e "s|@PORT@|$((base + 30))|g" -e "s|@BACKENDS@|$backends|" "$here/haproxy.cfg" >"$dir/haproxy.cfg"
  haproxy -f "$dir/haproxy.cfg" -D -p "$dir/haproxy.pid"
  # Ready when every replica streams and one is the synchronous standby.
  for _ in $(seq 1 600); do
    sync=$(curl -fsS "http://127.0.0.1:$((base + 21))/cluster" 2>/dev/null | grep -o '"role": *"sync_standby"' | wc -l || true)
    [ "$nodes" = 1 ] && exit 0
    [ "${sync:-0}" -ge 1 ] && exit 0
    sleep 0.1
  done
  echo "no synchronous standby came up; see $dir/node*.log" >&2; exit 1 ;;
primary)
  for conf in "$dir"/node*.yml; do
    api=$(grep -A1 '^restapi:' "$conf" | grep -o '[0-9]*$' | head -n 1)
    if curl -fsS "http://127.0.0.1:$api/primary" >/dev/null 2>&1; then
      grep -A1 '^postgresql:' "$conf" | grep -o '[0-9]*$' | head -n 1; exit 0
    fi
  done
  exit 1 ;;
crash)
  port=$3
  for conf in "$dir"/node*.yml; do
    if grep -q "listen: 127.0.0.1:$port" "$conf"; then
      node=$(basename "$conf" .yml)
      pkill -9 -f "patroni $dir/$node.yml" 2>/dev/null || true
      as_postgres "$BIN/pg_ctl" -D "$dir/$node" -m immediate -w stop >/dev/null 2>&1 || true
      exit 0
    fi
  done
  echo "no node on port $port" >&2; exit 1 ;;
stop)
  pkill -9 -f "patroni $dir/" 2>/dev/null || true
  pkill -9 -f "etcd --name etcd0 --data-dir $dir/" 2>/dev/null || true
  [ -f "$dir/haproxy.pid" ] && kill -9 $(cat "$dir/haproxy.pid") 2>/dev/null || true
  for node in "$dir"/node*/; do
    [ -f "$node/postmaster.pid" ] && as_postgres "$BIN/pg_ctl" -D "$node" -m immediate -w stop >/dev/null 2>&1 || true
  done
  rm -rf "$dir" ;;
*) echo "usage: $0 start|primary|crash|stop DIR ..." >&2; exit 2 ;;
esac
