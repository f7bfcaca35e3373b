# Sourced by the entry scripts: create .venv (once) and install the package with the pinned torch/torchvision pair.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=.venv/.mvp_vpg-installed
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
