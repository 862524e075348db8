#!/usr/bin/env bash
# Issue 15 part 2 on a host with cores to spare: benchmarks/service_scaling.py against a PostgreSQL
# server of its own (a throwaway cluster on this machine), then the same on SQLite.
#
#   scripts/host_scaling.sh OUTDIR
#
# PostgreSQL binaries: $PG_BIN (a folder with initdb, pg_ctl, postgres); else those of a `pgserver`
# wheel in .pg/ (PyPI's pgserver ships a relocatable PostgreSQL 16; carried to machines without one:
# `pip download --no-deps --only-binary=:all: -d .pg pgserver==0.1.4`, add --python-version/--platform
# for another machine's Python);
# else `pg_config --bindir`. As root the server runs as user nobody (PostgreSQL refuses root).
# Writes OUTDIR/pg.json (and sqlite.json when SQLITE_WORKERS is set), OUTDIR/host.txt, the server log.
#
# Env (defaults): WORKERS (1,2,4,8,16,32,64), DURATIONS (5), ROUNDS (6), SQLITE_WORKERS (none),
# SQLITE_DURATIONS (DURATIONS), PORT (54329), MAX_CONNECTIONS (400).
set -euo pipefail
OUTDIR=${1:?usage: scripts/host_scaling.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(realpath "$OUTDIR")
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
PORT=${PORT:-54329}
{ nproc --all; grep -m1 "model name" /proc/cpuinfo || true; grep MemTotal /proc/meminfo; uname -r; } > "$OUTDIR/host.txt"

PG_BIN=${PG_BIN:-}
wheel=$(ls .pg/pgserver-*.whl 2>/dev/null | head -1 || true)
if [ -z "$PG_BIN" ] && [ -n "$wheel" ]; then
    rm -rf /tmp/pgwheel
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall('/tmp/pgwheel')" "$wheel"
    PG_BIN=/tmp/pgwheel/pgserver/pginstall/bin
    chmod -R a+rX /tmp/pgwheel && chmod a+x "$PG_BIN"/*
fi
PG_BIN=${PG_BIN:-$(pg_config --bindir)}
DATA=$(mktemp -d /tmp/skiptune-pg.XXXXXX)
AS=()
if [ "$(id -u)" = 0 ]; then chown nobody "$DATA"; AS=(runuser -u nobody --); fi
"${AS[@]}" "$PG_BIN/initdb" -D "$DATA" -A trust -U postgres > "$OUTDIR/initdb.log"
opts="-h 127.0.0.1 -p $PORT -k $DATA -c max_connections=${MAX_CONNECTIONS:-400} -c shared_buffers=1GB"
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -o "$opts" -w start
stop() {
    "${AS[@]}" "$PG_BIN/pg_ctl" -D "$DATA" -m fast stop || true
    cp "$DATA/server.log" "$OUTDIR/server.log" || true
}
trap stop EXIT
"$PG_BIN/postgres" --version | tee -a "$OUTDIR/host.txt"

rc=0
"$PY" benchmarks/service_scaling.py --storage "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres" \
    --workers "${WORKERS:-1,2,4,8,16,32,64}" --duration "${DURATIONS:-5}" --rounds "${ROUNDS:-6}" \
    --out "$OUTDIR/pg.json" || rc=$?
if [ -n "${SQLITE_WORKERS:-}" ]; then
    "$PY" benchmarks/service_scaling.py --storage sqlite --workers "$SQLITE_WORKERS" \
        --duration "${SQLITE_DURATIONS:-${DURATIONS:-5}}" --rounds "${ROUNDS:-6}" --out "$OUTDIR/sqlite.json" || rc=$?
fi
exit $rc
