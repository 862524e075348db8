#!/usr/bin/env bash
# Issue 24 part 3 on a host with cores to spare (CPU only): the fleet behind `skiptune proxy`.
#
#   scripts/host_proxy.sh OUTDIR
#
# 1. benchmarks/proxy_faults.py: FAULT_WORKERS (64) workers behind the proxy; SIGKILLs, a frozen worker,
#    the proxy restarted, the database stopped for OUTAGE (20) s -> OUTDIR/faults.json (lost, duplicates,
#    budget exact, exit codes).
# 2. benchmarks/service_scaling.py --via-proxy at WORKERS (64,128,256), 5 s stand-in -> OUTDIR/proxy.json
# 3. the same on PostgreSQL directly -> OUTDIR/direct.json
# All against a throwaway PostgreSQL of its own, as scripts/host_scaling.sh (binaries: $PG_BIN, else a
# `pgserver` wheel in .pg/, else `pg_config --bindir`; as root the server runs as user nobody).
# grpcio: installed from a wheel in .pg/ when the interpreter lacks it
# (`pip download --no-deps --only-binary=:all: -d .pg grpcio==1.85.4`).
# About 8 minutes with the defaults on 16 cores (each step is cut off by `timeout`, what it measured
# so far is kept). Env (defaults): FAULT_WORKERS (64), WORKERS (64,128,256), ROUNDS (4), FAULT_ROUNDS
# (6), OUTAGE (20), PORT (54329), MAX_CONNECTIONS (600), STEP_S (faults 200, each scaling series 150).
set -uo pipefail
OUTDIR=${1:?usage: scripts/host_proxy.sh OUTDIR}
mkdir -p "$OUTDIR"
OUTDIR=$(realpath "$OUTDIR")
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
PORT=${PORT:-54329}
{ nproc --all; grep -m1 "model name" /proc/cpuinfo || true; grep MemTotal /proc/meminfo; uname -r; } > "$OUTDIR/host.txt"
if ! "$PY" -c "import grpc" 2>/dev/null; then
    whl=$(ls .pg/grpcio-*.whl 2>/dev/null | head -1 || true)
    [ -n "$whl" ] && "$PY" -m pip install --no-deps --no-index -q "$whl"
fi
"$PY" -c "import grpc; print('grpcio', grpc.__version__)" | tee -a "$OUTDIR/host.txt" || exit 3

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
AS=""
if [ "$(id -u)" = 0 ]; then chown nobody "$DATA"; AS="runuser -u nobody --"; fi
$AS "$PG_BIN/initdb" -D "$DATA" -A trust -U postgres > "$OUTDIR/initdb.log"
opts="-h 127.0.0.1 -p $PORT -k $DATA -c max_connections=${MAX_CONNECTIONS:-600} -c shared_buffers=1GB"
PG_START="$AS $PG_BIN/pg_ctl -D $DATA -l $DATA/server.log -o '$opts' -w start"
PG_STOP="$AS $PG_BIN/pg_ctl -D $DATA -m fast -w stop"
eval "$PG_START"
stop() {
    eval "$PG_STOP" || true
    cp "$DATA/server.log" "$OUTDIR/server.log" || true
}
trap stop EXIT
"$PG_BIN/postgres" --version | tee -a "$OUTDIR/host.txt"
URL="postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"

rc=0
timeout -s INT "${FAULT_STEP_S:-200}" "$PY" benchmarks/proxy_faults.py --storage "$URL" \
    --workers "${FAULT_WORKERS:-64}" --rounds "${FAULT_ROUNDS:-6}" --outage "${OUTAGE:-20}" \
    --pg-stop "$PG_STOP" --pg-start "$PG_START" --out "$OUTDIR/faults.json" 2>&1 | tee "$OUTDIR/faults.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
for mode in proxy direct; do
    flag=(); [ "$mode" = proxy ] && flag=(--via-proxy)
    timeout -s INT "${STEP_S:-150}" "$PY" benchmarks/service_scaling.py --storage "$URL" "${flag[@]}" \
        --workers "${WORKERS:-64,128,256}" --duration "${DURATIONS:-5}" --rounds "${ROUNDS:-4}" \
        --max-memory-gib 60 --out "$OUTDIR/$mode.json" 2>&1 | tee "$OUTDIR/$mode.log"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
done
exit $rc
