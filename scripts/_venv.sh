# Sourced by the scripts: make .venv and install the project with an extra, once per
# change of pyproject.toml, so that a fresh machine needs nothing but python3.
ensure_venv() {
  local extra=$1 stamp
  stamp=".venv/.installed-$extra-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -qq --upgrade pip
    .venv/bin/python -m pip install -qq -e ".[$extra]"
    rm -f .venv/.installed-"$extra"-*
    touch "$stamp"
  fi
}
