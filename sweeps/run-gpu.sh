#!/usr/bin/env bash
# The GPU benchmark (sweeps/gpu-h100.toml) on a machine with NVIDIA GPUs and possibly no package
# index: the record under runs/gpu-<device>/ and its report under reports/<device>/.
#
#   sweeps/run-gpu.sh --prepare [WHEELS]   on a machine WITH an index (any OS): download the
#                                          wheels the GPU image lacks into WHEELS (default .whl,
#                                          git-ignored: `echo /.whl/ >> .git/info/exclude`)
#   sweeps/run-gpu.sh [WHEELS]             on the GPU machine, from the repository root: install
#                                          WHEELS offline, check the backend, run, report
#
# The GPU image is expected to hold jax with its CUDA plugin, flax, optax, orbax-checkpoint,
# pandas, pyarrow, matplotlib, typer, rich, jaxtyping, tokenizers, safetensors, scipy (the
# H100/H200 images here do: jax 0.11.2 + jax-cuda13-plugin, Python 3.12); only grain and the
# two packages it needs beyond those travel as wheels. With an index, `uv sync --extra cuda12`
# and `uv run scaling sweep --spec sweeps/gpu-h100.toml` do the same without this script.
# Environment: PYTHON (default python3), OUT (record directory), SWEEP (spec), STEPS (override).
set -euo pipefail

PYTHON=${PYTHON:-python3}
SWEEP=${SWEEP:-sweeps/gpu-h100.toml}
# The versions uv.lock resolves (grain's needs beyond what the image holds: array-record,
# portpicker); the wheels are CPython 3.12 manylinux x86-64 builds.
WHEELS_NEEDED=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0)

if [[ "${1:-}" == "--prepare" ]]; then
    dir=${2:-.whl}
    mkdir -p "$dir"
    for spec in "${WHEELS_NEEDED[@]}"; do
        "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d "$dir" "$spec"
    done
    ls -l "$dir"
    exit 0
fi

wheels=${1:-.whl}
site=${SITE:-/tmp/scaling-site}
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's package, not an install
export PYTHONUNBUFFERED=1

env_json=$(mktemp)
"$PYTHON" -m scaling env --json | tail -n 1 >"$env_json"
"$PYTHON" -m scaling env
read -r backend devices device <<<"$("$PYTHON" - "$env_json" <<'EOF'
import json, re, sys
info = json.load(open(sys.argv[1]))
name = info["hardware_profile"] or re.sub(r"[^a-z0-9]+", "-", info["device_kind"].lower())
print(info["backend"], info["device_count"], name.strip("-") or "unknown")
EOF
)"
if [[ "$backend" != "gpu" && "$backend" != "cuda" ]]; then
    echo "error: jax's backend is $backend, not a GPU; install jax's CUDA plugin" >&2
    exit 2
fi

# Keep the points whose mesh fits the devices present (mode none: one device); the kept points
# are unchanged, so their run ids are those of the whole spec.
spec=$(mktemp --suffix=.toml)
"$PYTHON" - "$SWEEP" "$devices" "$spec" "${STEPS:-}" <<'EOF'
import sys, tomllib
source, devices, target, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = tomllib.load(open(source, "rb"))
def size(point):
    mesh = point.get("mesh")
    return 1 if mesh is None else eval(mesh.replace("x", "*"))
points = [p for p in data["points"] if size(p) <= devices]
fixed = {**data["fixed"], **({"steps": int(steps)} if steps else {})}
def value(v):
    return f'"{v}"' if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)
lines = [f'name = "{data["name"]}"', "[fixed]"]
lines += [f"{k} = {value(v)}" for k, v in fixed.items()]
for p in points:
    lines += ["[[points]]", *(f"{k} = {value(v)}" for k, v in p.items())]
open(target, "w").write("\n".join(lines) + "\n")
print(f"{len(points)} of {len(data['points'])} points fit {devices} device(s)", file=sys.stderr)
EOF

out=${OUT:-runs/gpu-$device}
"$PYTHON" -m scaling sweep --spec "$spec" --out "$out"
"$PYTHON" -m scaling report "$out" --out "reports/$device"
cp "$env_json" "reports/$device/env.json"
echo "record: $out; report: reports/$device"
