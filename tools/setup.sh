#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with audiossl
# installed in editable mode (with the test extra and s3prl, which the s3prl
# upstream's tests run against), plus Debian's flite and sox for the corpus
# builder when we may install them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v flite >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing flite and sox (for tools/make_corpus.py)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite sox >/dev/null) \
      || echo "setup: could not install flite/sox; the corpus builder and its test will be unavailable"
  else
    echo "setup: flite/sox missing; install them (apt-get install flite sox) to build corpora"
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,s3prl]"
echo "setup: done; activate with '. .venv/bin/activate'"
