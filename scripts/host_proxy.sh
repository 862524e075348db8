#!/usr/bin/env bash
# Issue 24 part 3 on a host with cores to spare (CPU only): the fleet behind `skiptune proxy`.
#
#   scripts/host_proxy.sh OUTDIR
#
# PART=faults (about 3 min): benchmarks/proxy_faults.py: FAULT_WORKERS (64) workers behind the proxy
#    (PROXY_PROCESSES server processes, 4); 4 SIGKILLed, 1 frozen past --grace, the proxy restarted, the
#    database stopped for OUTAGE (20) s -> OUTDIR/faults.json (lost, duplicates, budget exact, exit codes).
# PART=scaling (about 7 min): benchmarks/service_scaling.py --via-proxy at WORKERS (64,128,256), 5 s
#    stand-in -> OUTDIR/proxy.json; one proxy process at the first count -> OUTDIR/proxy1.json; the same
#    counts on PostgreSQL directly -> OUTDIR/direct.json.
# PART=all (default): both, about 10 min (a device call lasts 10 min at most: run the parts as two calls).
# All against a throwaway PostgreSQL of its own, as scripts/host_scaling.sh (binaries: $PG_BIN, else a
# `pgserver` wheel in .pg/, else `pg_config --bindir`; as root the server runs as user nobody).
# grpcio: installed from a wheel in .pg/ when the interpreter lacks it
# (`pip download --no-deps --only-binary=:all: -d .pg grpcio==1.85.4`).
# Each step is cut off by `timeout` (what it measured so far is kept). Env (defaults): PART (all),
# FAULT_WORKERS (64), WORKERS (64,128,256), ROUNDS (4), FAULT_ROUNDS (6), OUTAGE (20), PROXY_PROCESSES
# (4), PORT (54329), MAX_CONNECTIONS (600), FAULT_STEP_S (240), STEP_S (240 per scaling series).
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
PART=${PART:-all}
if [ "$PART" = all ] || [ "$PART" = faults ]; then
    timeout -s INT "${FAULT_STEP_S:-240}" "$PY" benchmarks/proxy_faults.py --storage "$URL" \
        --workers "${FAULT_WORKERS:-64}" --rounds "${FAULT_ROUNDS:-6}" --outage "${OUTAGE:-20}" \
        --proxy-processes "${PROXY_PROCESSES:-4}" --pg-stop "$PG_STOP" --pg-start "$PG_START" \
        --out "$OUTDIR/faults.json" 2>&1 | tee "$OUTDIR/faults.log"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
fi
scaling() {  # $1: label, $2: workers, $3: step limit (s), then service_scaling.py options
    local label=$1 workers=$2 limit=$3
    shift 3
    timeout -s INT "$limit" "$PY" benchmarks/service_scaling.py --storage "$URL" "$@" \
        --workers "$workers" --duration "${DURATIONS:-5}" --rounds "${ROUNDS:-4}" \
        --max-memory-gib 60 --out "$OUTDIR/$label.json" 2>&1 | tee "$OUTDIR/$label.log"
    [ "${PIPESTATUS[0]}" = 0 ] || rc=1
}
if [ "$PART" = all ] || [ "$PART" = scaling ]; then
    W=${WORKERS:-64,128,256}
    scaling proxy "$W" "${STEP_S:-240}" --via-proxy --proxy-processes "${PROXY_PROCESSES:-4}"
    scaling proxy1 "${W%%,*}" 90 --via-proxy --proxy-processes 1     # one proxy process, smallest N
    scaling direct "$W" "${STEP_S:-240}"
fi
exit $rc
