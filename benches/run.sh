#!/usr/bin/env bash
# Runs every odi-bench comparison: installs the reference tools if they are missing (as root,
# with apt-get), builds odi-bench in release, and runs it. Extra arguments go to odi-bench
# (`--quick`, `--runs N`, `--per-curl N`; see `odi-bench --help`).
#
# Prints one line per comparison, then the machine line. Progress goes to stderr.
# Honours CARGO_TARGET_DIR (e.g. CARGO_TARGET_DIR=/tmp/target-bench to keep clear of another
# build's lock).
#
# `run.sh --bindings [SIZE_MIB] [RUNS]` runs the bindings benchmark instead (benches/bindings.sh:
# `odi.get` from Python against `odi get` and curl, release builds of both).
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "${1:-}" = "--bindings" ]; then
    shift
    exec benches/bindings.sh "$@"
fi

missing=()
for tool in nginx wrk openssl curl docker-registry; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run.sh: missing ${missing[*]}; run as root to install them with apt-get, or install them yourself" >&2
        exit 1
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk openssl curl docker-registry >/dev/null
fi
export PATH="$PATH:/usr/sbin"

cargo build --release --quiet -p odi-benches
target_dir="${CARGO_TARGET_DIR:-target}"

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
# A hard stop well beyond a normal run (about 2.5 minutes on 2 cores); SIGTERM lets odi-bench stop
# nginx and remove its temporary data.
exec timeout --signal=TERM --kill-after=30 900 "$target_dir/release/odi-bench" "$@"
