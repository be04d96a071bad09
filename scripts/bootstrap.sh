# Sourced by scripts/run and scripts/test: make .venv and install the project into it.
# Re-installs only when pyproject.toml changed, so the second run starts at once.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TRACKER_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
extras="${1:-}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.tracker-installed$extras"
if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # setuptools tells every editable install of a project laid out like this one (the
  # migrations ship from alembic/) that same-named folders may shadow it: a notice, not a
  # problem here, and the only line a first run would print. Other warnings still show.
  PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}" \
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root$extras"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
