# Sourced by scripts/deps.sh and training/setup.sh. training_python prints the first
# interpreter with Python >= 3.11 and venv ($PYTHON first, then python3, python3.13,
# python3.12, python3.11): the training pins need 3.11 (numpy 2.4, contourpy 1.3), and
# Ubuntu 22.04's python3 is 3.10. It fails, printing nothing, when there is none.
training_python() {
  local p
  for p in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$p" >/dev/null \
      && "$p" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$p"
      return 0
    fi
  done
  return 1
}
