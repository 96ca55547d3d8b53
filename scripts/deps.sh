# Sourced by scripts/demo.sh and scripts/test.sh (from the repository root): installs with
# apt, when missing, what the build needs (ALSA headers, pkg-config, a C toolchain) and,
# with the argument `test`, what the tests need too. Then checks that cargo is there.
need_pkgs=()
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
pkg-config --exists alsa 2>/dev/null || need_pkgs+=(libasound2-dev)
command -v cc >/dev/null || need_pkgs+=(build-essential)
if [ "${1:-}" = test ]; then
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
  command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
  # Encoders the format tests use to make FLAC, OGG/Vorbis and MP3 files from synthetic WAVs.
  command -v flac >/dev/null || need_pkgs+=(flac)
  command -v oggenc >/dev/null || need_pkgs+=(vorbis-tools)
  command -v lame >/dev/null || need_pkgs+=(lame)
  # Live capture of real sound without a sound card: a PulseAudio null sink's monitor,
  # captured through ALSA's pulse plugin (tests/daemon_capture.rs), played with pacat.
  command -v pulseaudio >/dev/null || need_pkgs+=(pulseaudio)
  command -v pacat >/dev/null || need_pkgs+=(pulseaudio-utils)
  compgen -G '/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so' >/dev/null || need_pkgs+=(libasound2-plugins)
  # The training tests' venv (training/setup.sh): Python >= 3.11 with venv, which Debian
  # and Ubuntu ship apart; where python3 is older (Ubuntu 22.04), python3.11 beside it.
  source training/find-python.sh
  if ! training_python >/dev/null; then
    if python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      need_pkgs+=(python3-venv)
    else
      need_pkgs+=(python3.11 python3.11-venv)
    fi
  fi
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
