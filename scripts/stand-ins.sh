#!/usr/bin/env bash
# Installs (once, cached under ~/.cache/fhir-export) and starts the local stand-ins the tests
# need: moto server for S3, DynamoDB and SQS (with DynamoDB's item operations made atomic,
# see scripts/moto-server.py), Azurite's Blob service, and the smart-fetch Bulk Data client.
# Source it: it exports the variables the tests read and installs a trap that stops what it
# started.
#
#   FHIR_EXPORT_MOTO_URL   http://127.0.0.1:PORT of the running moto server
#   AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   pointed at it
#   AZURITE_BLOB_STORAGE_URL   http://127.0.0.1:PORT of Azurite's Blob service (account
#                              devstoreaccount1, the emulator's published key)
#   FHIR_EXPORT_SMART_FETCH   the smart-fetch command
#   FHIR_EXPORT_HFS_BIN, FHIR_EXPORT_HFS_DATA_DIR   the Helios FHIR Server binary and its data
#                              folder (scripts/install-helios.sh); tests start their own servers
set -euo pipefail

CACHE="${FHIR_EXPORT_CACHE:-$HOME/.cache/fhir-export}"
MOTO_VERSION=5.2.5
VENV="$CACHE/venv-moto-$MOTO_VERSION"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$VENV/bin/cfn-lint" ]; then
    echo "stand-ins: installing moto $MOTO_VERSION and cfn-lint into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" "cfn-lint==1.58.*" >&2
fi

SMART_FETCH_VERSION=1.0.3
SMART_FETCH_VENV="$CACHE/venv-smart-fetch-$SMART_FETCH_VERSION"
if [ ! -x "$SMART_FETCH_VENV/bin/smart-fetch" ]; then
    echo "stand-ins: installing smart-fetch $SMART_FETCH_VERSION into $SMART_FETCH_VENV" >&2
    rm -rf "$SMART_FETCH_VENV"
    python3 -m venv "$SMART_FETCH_VENV"
    "$SMART_FETCH_VENV/bin/pip" install --quiet "smart-fetch==$SMART_FETCH_VERSION" >&2
fi

AZURITE_VERSION=3.35.0
AZURITE_DIR="$CACHE/azurite-$AZURITE_VERSION"
AZURITE_MAIN="$AZURITE_DIR/node_modules/azurite/dist/src/blob/main.js"
if [ ! -f "$AZURITE_MAIN" ]; then
    echo "stand-ins: installing Azurite $AZURITE_VERSION into $AZURITE_DIR" >&2
    rm -rf "$AZURITE_DIR"
    npm install --silent --no-audit --no-fund --prefix "$AZURITE_DIR" "azurite@$AZURITE_VERSION" >&2
fi

# The upstream FHIR server: a ~22-minute build the first time, cached after. A failed install
# stops here, so the tests that need it fail rather than skip.
HELIOS_PATHS=$(bash scripts/install-helios.sh)
FHIR_EXPORT_HFS_BIN=$(printf '%s\n' "$HELIOS_PATHS" | sed -n 's/^HFS_BIN=//p')
FHIR_EXPORT_HFS_DATA_DIR=$(printf '%s\n' "$HELIOS_PATHS" | sed -n 's/^HFS_DATA_DIR=//p')
export FHIR_EXPORT_HFS_BIN FHIR_EXPORT_HFS_DATA_DIR

MOTO_PORT=$(free_port)
MOTO_LOG="${TMPDIR:-/tmp}/fhir-export-moto-$MOTO_PORT.log"
"$VENV/bin/python" scripts/moto-server.py -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
MOTO_PID=$!
AZURITE_PORT=$(free_port)
AZURITE_DATA=$(mktemp -d "${TMPDIR:-/tmp}/fhir-export-azurite.XXXXXX")
AZURITE_LOG="$AZURITE_DATA.log"
node "$AZURITE_MAIN" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --location "$AZURITE_DATA" \
    --silent --loose --skipApiVersionCheck --disableTelemetry >"$AZURITE_LOG" 2>&1 &
AZURITE_PID=$!
stop_stand_ins() {
    kill "$MOTO_PID" "$AZURITE_PID" 2>/dev/null || true
    wait "$MOTO_PID" "$AZURITE_PID" 2>/dev/null || true
    rm -rf "$AZURITE_DATA" "$AZURITE_LOG"
}
trap stop_stand_ins EXIT

moto_ready() {
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$MOTO_PORT/moto-api/" >/dev/null 2>&1
}
for _ in $(seq 1 150); do
    if moto_ready; then
        break
    fi
    sleep 0.1
done
if ! moto_ready; then
    echo "stand-ins: moto did not start; its log:" >&2
    cat "$MOTO_LOG" >&2
    exit 1
fi

# Azurite answers any request once it listens (400 for this one).
azurite_ready() {
    python3 - "http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list" <<'PY' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
PY
}
for _ in $(seq 1 150); do
    if azurite_ready; then
        break
    fi
    sleep 0.1
done
if ! azurite_ready; then
    echo "stand-ins: Azurite did not start; its log:" >&2
    cat "$AZURITE_LOG" >&2
    exit 1
fi

export FHIR_EXPORT_MOTO_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ENDPOINT_URL="$FHIR_EXPORT_MOTO_URL"
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export FHIR_EXPORT_CFN_LINT="$VENV/bin/cfn-lint"
export FHIR_EXPORT_SMART_FETCH="$SMART_FETCH_VENV/bin/smart-fetch"
export AZURITE_BLOB_STORAGE_URL="http://127.0.0.1:$AZURITE_PORT"
echo "stand-ins: moto on $FHIR_EXPORT_MOTO_URL, Azurite on $AZURITE_BLOB_STORAGE_URL" >&2
