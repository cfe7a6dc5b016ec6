#!/usr/bin/env bash
# Make sure the local PostgreSQL (127.0.0.1:5432, database "test"), Redis (127.0.0.1:6379) and NATS with
# JetStream (127.0.0.1:4222) that the storage and cluster tests and the README's examples use are running;
# start whichever is down. Idempotent.
# On a machine without them installed, use compose.yaml instead (see the README).
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "services: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { echo "services: PostgreSQL is not running on 127.0.0.1:5432 and could not be started" >&2; exit 1; }
fi
if ! psql -h 127.0.0.1 -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -tAc 'create database test' >/dev/null
fi

if ! redis_up; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    for _ in $(seq 1 40); do redis_up && break; sleep 0.25; done
    redis_up || { echo "services: Redis is not running on 127.0.0.1:6379 and could not be started" >&2; exit 1; }
fi
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! nats_up; then
    if ! command -v nats-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q nats-server >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nats-server >/dev/null 2>&1; } || true
    fi
    if command -v nats-server >/dev/null; then
        echo "services: starting NATS (JetStream)"
        mkdir -p /var/lib/nats-server 2>/dev/null || true
        nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log >/dev/null 2>&1 &
    fi
    for _ in $(seq 1 40); do nats_up && break; sleep 0.25; done
    nats_up || { echo "services: NATS is not running on 127.0.0.1:4222 and could not be started" >&2; exit 1; }
fi
echo "services: PostgreSQL, Redis and NATS are up"
