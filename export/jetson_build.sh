#!/usr/bin/env bash
# Build a TensorRT engine from an edgeseg bundle with trtexec, on the device that will run it
# (Jetson with JetPack 6.x / TensorRT 10.3, or a TensorRT 11.x install), and write the sidecar
# ENGINE.json that edgeseg's Segmenter needs. Needs bash, python3 (stdlib only), trtexec, and
# edgeseg's rule table: build_engine.py (next to this file) loads edgeseg/export/tensorrt/rules.py
# and sidecar.py by path from this checkout (or from $EDGESEG_TRT_RULES). The precision flags,
# strong typing, DLA options, profile shapes and the sidecar all come from there, so this script,
# build_engine.py and `python3 -m edgeseg.export.tensorrt` decide alike (tests/test_tensorrt_recipes.py).
#
# NOT RUN BY THE PROJECT: TensorRT is not installed where edgeseg is developed. Check the
# engine against its bundle before trusting it (export/README.md, "Verify").
#
# usage: export/jetson_build.sh BUNDLE [OUT.engine]
#
# environment (all optional):
#   BATCH=1,1,1          optimisation profile MIN,OPT,MAX batch (or one N); H x W come from
#                        the bundle's edgeseg.json, never guessed
#   PRECISION=auto       auto | fp32 | fp16 | int8. TensorRT 10: fp16 adds --fp16. TensorRT 11:
#                        must be auto or what the ONNX holds (strongly typed)
#   TIMING_CACHE=FILE    timing cache to reuse and update (default: timing.cache next to OUT)
#   DLA_CORE=N           build for DLA core N with GPU fallback (Jetson AGX Orin / Orin NX;
#                        TensorRT 10.0-10.7 or 11.4.1+; FP16/INT8 only; one batch size)
#   WORKSPACE_MB=1024    builder workspace limit
#   INPUT_NAME=pixel_values  the ONNX input (edgeseg always exports pixel_values)
#   TRTEXEC=trtexec      JetPack installs it as /usr/src/tensorrt/bin/trtexec
#   TRT_VERSION=10.3.0   skip version detection
#   EDGESEG_TRT_RULES=DIR  folder holding rules.py and sidecar.py (default ../edgeseg/export/tensorrt)
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BUNDLE [OUT.engine]"
BUNDLE=${1%/}
OUT=${2:-$BUNDLE.engine}
TIMING_CACHE=${TIMING_CACHE:-$(dirname "$OUT")/timing.cache}

if [ -z "${TRTEXEC:-}" ]; then
    TRTEXEC=$(command -v trtexec || true)
    [ -n "$TRTEXEC" ] || TRTEXEC=/usr/src/tensorrt/bin/trtexec
fi
[ -x "$TRTEXEC" ] || die "trtexec not found (set TRTEXEC=...; JetPack: /usr/src/tensorrt/bin/trtexec)"

# --- TensorRT version: env, python bindings, the deb package, or trtexec's banner ------------
if [ -z "${TRT_VERSION:-}" ]; then
    TRT_VERSION=$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)
fi
if [ -z "$TRT_VERSION" ]; then
    TRT_VERSION=$(dpkg-query -W -f='${Version}' libnvinfer-bin 2>/dev/null | cut -d- -f1 || true)
fi
if [ -z "$TRT_VERSION" ]; then
    n=$("$TRTEXEC" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n1 | tr -dc 0-9 || true)
    [ -n "$n" ] && TRT_VERSION="$((n / 10000)).$((n / 100 % 100)).$((n % 100))"
fi
[ -n "$TRT_VERSION" ] || die "cannot tell the TensorRT version; set TRT_VERSION=10.3.0 (for example)"
export TRT_VERSION TIMING_CACHE

# --- the plan: edgeseg's rule table (loaded by build_engine.py from ../edgeseg/export/tensorrt or
# $EDGESEG_TRT_RULES) decides the precision flags, typing, DLA options and profile shapes -------
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/edgeseg-trtexec.XXXXXX")
TMP="$OUT.tmp.$$"             # beside OUT, so that the final mv is a rename
SIDE_TMP="$OUT.json.tmp.$$"
trap 'rm -rf "$WORK" "$TMP" "$SIDE_TMP"' EXIT
PLAN_ARGS=$(python3 - "$HERE" "$BUNDLE" "$OUT" "$WORK/plan.json" <<'PY'
import json, os, sys
from pathlib import Path
here, bundle, out, plan_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, here)
import build_engine as be
rules, sidecar = be.load("rules"), be.load("sidecar")
env = os.environ
dla = env.get("DLA_CORE") or None
if dla is not None and not dla.isdigit():
    be.fail(f"DLA_CORE must be a core number, got {dla!r}")
try:
    version = rules.parse_version(env["TRT_VERSION"])
except ValueError:
    be.fail(f"TRT_VERSION={env['TRT_VERSION']!r} is not a TensorRT version (e.g. 10.3.0)")
try:
    rules.check_engine_name(out.name)
    batch = rules.parse_batch(env.get("BATCH") or "1,1,1")
    m, model = be.read_bundle(bundle)
    # what the ONNX holds: Q/DQ nodes (their op names are plain strings in the file) mean INT8
    qdq = b"QuantizeLinear" in model.read_bytes()
    plan = rules.plan_build(version, env.get("PRECISION") or "auto",
                            rules.onnx_precision_without_onnx(qdq, m.get("precision")),
                            dla_core=None if dla is None else int(dla), batch=batch)
    shapes = rules.profile_shapes((None, 3, None, None), int(m["preprocess"]["height"]),
                                  int(m["preprocess"]["width"]), batch)
except rules.REFUSALS as exc:
    be.fail(str(exc))
name = env.get("INPUT_NAME") or "pixel_values"
plan_file.write_text(json.dumps({"plan": vars(plan), "shapes": shapes, "input": name}))
args = [f"--onnx={model}"] + [f"--{k}Shapes={name}:" + "x".join(map(str, shapes[k])) for k in ("min", "opt", "max")]
args += plan.trtexec_args()
args += [f"--memPoolSize=workspace:{env.get('WORKSPACE_MB') or rules.DEFAULT_WORKSPACE_MB}",
         f"--timingCacheFile={env['TIMING_CACHE']}", "--skipInference"]
print("\n".join(args))
PY
) || exit 2
mapfile -t args <<<"$PLAN_ARGS"
args+=(--saveEngine="$TMP")

echo "+ $TRTEXEC ${args[*]}" >&2
"$TRTEXEC" "${args[@]}"
[ -s "$TMP" ] || die "trtexec wrote no engine"

# --- sidecar (the same format as the Python builders), then move the engine into place -------
python3 - "$HERE" "$BUNDLE" "$TMP" "$OUT" "$WORK/plan.json" "$SIDE_TMP" <<'PY' || die "cannot write the sidecar"
import hashlib, json, sys
from pathlib import Path
here, bundle, tmp, out, plan_file, side_tmp = sys.argv[1], *(Path(p) for p in sys.argv[2:7])
sys.path.insert(0, here)
import build_engine as be
rules, sidecar = be.load("rules"), be.load("sidecar")
m, _ = be.read_bundle(bundle)
saved = json.loads(plan_file.read_text())
plan = rules.BuildPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["plan"].items()})
side = sidecar.sidecar_content(m, bundle, plan, saved["shapes"], saved["input"],
                               hashlib.sha256(tmp.read_bytes()).hexdigest(), gpu={"name": sidecar.jetson_model()},
                               engine_name=out.name, built_with="trtexec (export/jetson_build.sh)")
side_tmp.write_text(json.dumps(side, indent=2) + "\n")
PY
mv -f "$TMP" "$OUT"
mv -f "$SIDE_TMP" "$OUT.json"
echo "engine: $OUT (TensorRT $TRT_VERSION, batch ${BATCH:-1,1,1} at the bundle's size); sidecar: $OUT.json"
