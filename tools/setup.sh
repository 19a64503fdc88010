#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with audiossl
# installed in editable mode (with the test extra, s3prl, which the s3prl
# upstream's tests run against, transformers for the Hugging Face sources' tests (the hf extra), and the ABX
# reference zrc-abx2), plus Debian's flite and sox for the corpus
# builder and tcmalloc for training (audiossl/utils/allocator.py) when we may
# install them.
set -euo pipefail
cd "$(dirname "$0")/.."

tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if ! command -v flite >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1 || [ ! -e "$tcmalloc" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing flite and sox (for tools/make_corpus.py) and tcmalloc (faster CPU training)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq flite sox libtcmalloc-minimal4 \
      >/dev/null) || echo "setup: could not install flite/sox/tcmalloc; the corpus builder and its test will be" \
                           "unavailable, and training uses glibc's malloc"
  else
    echo "setup: install flite and sox (apt-get install flite sox) to build corpora, and libtcmalloc-minimal4" \
         "for faster CPU training"
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,s3prl,hf]"
# The ABX reference (zrc-abx2), which tools/abx_crosscheck.py and its test run beside audiossl's ABX: a
# Cython extension built here from its sdist, so the build needs Cython, setuptools_scm (without it the
# sdist calls itself 0.0.0 and pip discards the build as "inconsistent version") and a C compiler.
# Without it everything else works, but the cross-check test is skipped, and fails under CI.
abx_log=$(mktemp)
if ! { .venv/bin/python -m pip install -q Cython setuptools setuptools_scm wheel \
       && .venv/bin/python -m pip install -q --no-build-isolation zerospeech-libriabx2; } >"$abx_log" 2>&1; then
  echo "setup: could not install zerospeech-libriabx2, the ABX reference; the cross-check test will be skipped" \
       "(and fail under CI). pip said:"
  grep -v "^WARNING: Location" "$abx_log" | grep -iE "error|inconsistent|not found|gcc|cc1" | tail -5 | sed 's/^/  /'
  command -v cc >/dev/null 2>&1 || echo "  (no C compiler: apt-get install gcc)"
fi
rm -f "$abx_log"
echo "setup: done; activate with '. .venv/bin/activate'"
