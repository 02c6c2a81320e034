#!/usr/bin/env bash
# The bindings benchmark in release builds: `odi.get` from Python against `odi get` and curl on
# the same artifact (benches/bindings_get.py). Builds `odi` in release, the wheel in release with
# maturin into target/bindings-release (its own target directory, as the bindings are outside the
# workspace), installs it into a venv there, and runs the script.
#
# usage: benches/bindings.sh [SIZE_MIB] [RUNS]     (default 1024 5; also `benches/run.sh --bindings`)
# Honours CARGO_TARGET_DIR for the `odi` build. Needs python3 with venv, curl, and about
# 4 x SIZE_MIB free under $TMPDIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
out="$root/target/bindings-release"
venv="$out/venv"

for tool in python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bindings.sh: $tool is missing" >&2; exit 1; }
done
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || { echo "bindings.sh: cannot make a venv: install python3-venv" >&2; exit 1; }
fi
if [ ! -x "$venv/bin/maturin" ]; then
  echo "bindings.sh: installing maturin into $venv (PyPI)" >&2
  "$venv/bin/python" -m pip install -q "maturin>=1.16,<2"
fi

cargo build --release --quiet -p odi-cli --bin odi
rm -rf "$out/wheels"
(cd bindings/python && CARGO_TARGET_DIR="$out" "$venv/bin/maturin" build --release -q -i "$venv/bin/python" -o "$out/wheels")
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$out"/wheels/odi-*.whl

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD)"
exec "$venv/bin/python" benches/bindings_get.py "$target_dir/release/odi" "${1:-1024}" "${2:-5}"
