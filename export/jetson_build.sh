#!/usr/bin/env bash
# Build a TensorRT engine from an edgeseg bundle with trtexec, on the device that will run it
# (Jetson with JetPack 6.x / TensorRT 10.3, or a TensorRT 11.x install), and write the sidecar
# ENGINE.json that edgeseg's Segmenter needs. Needs bash, python3 (stdlib only) and trtexec.
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
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 BUNDLE [OUT.engine]"
BUNDLE=${1%/}
OUT=${2:-$BUNDLE.engine}
case "$OUT" in *.engine|*.plan) ;; *) die "the engine file name must end in .engine or .plan" ;; esac
BATCH=${BATCH:-1,1,1}
PRECISION=${PRECISION:-auto}
WORKSPACE_MB=${WORKSPACE_MB:-1024}
INPUT_NAME=${INPUT_NAME:-pixel_values}
TIMING_CACHE=${TIMING_CACHE:-$(dirname "$OUT")/timing.cache}
DLA_CORE=${DLA_CORE:-}

if [ -z "${TRTEXEC:-}" ]; then
    TRTEXEC=$(command -v trtexec || true)
    [ -n "$TRTEXEC" ] || TRTEXEC=/usr/src/tensorrt/bin/trtexec
fi
[ -x "$TRTEXEC" ] || die "trtexec not found (set TRTEXEC=...; JetPack: /usr/src/tensorrt/bin/trtexec)"

# --- the bundle: verify the model's sha256 and read its input size with python3's json -------
read -r MODEL H W BUNDLE_PREC < <(python3 - "$BUNDLE" <<'PY'
import hashlib, json, sys
from pathlib import Path
b = Path(sys.argv[1])
m = json.loads((b / "edgeseg.json").read_text())
if m.get("schema_version") != 1:
    sys.exit(f"error: {b}/edgeseg.json has schema version {m.get('schema_version')!r}; expected 1")
name = m["model"]
if "/" in name or name in (".", ".."):
    sys.exit(f"error: model file name {name!r} has path components")
h = hashlib.sha256((b / name).read_bytes()).hexdigest()
if h != m["files"].get(name):
    sys.exit(f"error: {b / name} does not match its sha256 in edgeseg.json")
print(b / name, m["preprocess"]["height"], m["preprocess"]["width"], str(m.get("precision", "fp32")).lower())
PY
) || die "cannot read bundle $BUNDLE"

# what the ONNX holds: Q/DQ nodes (their op names are plain strings in the file) mean INT8
if LC_ALL=C grep -q -a QuantizeLinear "$MODEL"; then ONNX_PREC=int8
elif [ "$BUNDLE_PREC" = fp16 ]; then ONNX_PREC=fp16
else ONNX_PREC=fp32; fi

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
IFS=. read -r MAJOR MINOR PATCH _ <<<"$TRT_VERSION.0.0"
[ "$MAJOR" -ge 10 ] || die "TensorRT $TRT_VERSION is too old; these recipes target 10.x and 11.x"

IFS=, read -r BMIN BOPT BMAX _ <<<"$BATCH"
if [ -z "$BOPT" ]; then BOPT=$BMIN; BMAX=$BMIN; fi
{ [ "$BMIN" -ge 1 ] && [ "$BMIN" -le "$BOPT" ] && [ "$BOPT" -le "$BMAX" ]; } 2>/dev/null \
    || die "BATCH needs MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got $BATCH"

TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP"' EXIT
args=(
    --onnx="$MODEL"
    --saveEngine="$TMP"
    --minShapes="$INPUT_NAME:${BMIN}x3x${H}x${W}"
    --optShapes="$INPUT_NAME:${BOPT}x3x${H}x${W}"
    --maxShapes="$INPUT_NAME:${BMAX}x3x${H}x${W}"
    --memPoolSize="workspace:$WORKSPACE_MB"
    --timingCacheFile="$TIMING_CACHE"
    --skipInference
)

# --- precision: flags on TensorRT 10, strong typing on 11 -----------------------------------
FLAGS=()
if [ "$MAJOR" -ge 11 ]; then
    args+=(--stronglyTyped)   # always on in 11.x (the flag is accepted and changes nothing)
    case "$PRECISION" in auto|"$ONNX_PREC") ;;
        *) die "TensorRT $TRT_VERSION builds strongly typed networks: this ONNX is $ONNX_PREC, so PRECISION=$PRECISION contradicts it; export a bundle in that precision" ;;
    esac
    ENGINE_PREC=$ONNX_PREC
else
    case "$ONNX_PREC:$PRECISION" in
        int8:auto|int8:int8) FLAGS+=(--int8); ENGINE_PREC=int8 ;;     # explicit Q/DQ; no --calib
        int8:fp16) FLAGS+=(--int8 --fp16); ENGINE_PREC=int8+fp16 ;;
        fp16:auto|fp16:fp16|fp32:fp16) FLAGS+=(--fp16); ENGINE_PREC=fp16 ;;
        fp32:auto|fp32:fp32) ENGINE_PREC=fp32 ;;
        *:int8) die "PRECISION=int8 needs an INT8-QDQ bundle; calibration is not used (deprecated since TensorRT 10.1)" ;;
        *) die "PRECISION=$PRECISION does not fit this $ONNX_PREC ONNX; build the bundle of that precision" ;;
    esac
fi
args+=(${FLAGS[@]+"${FLAGS[@]}"})

if [ -n "$DLA_CORE" ]; then
    if { [ "$MAJOR" -eq 10 ] && [ "$MINOR" -gt 7 ]; } ||
       { [ "$MAJOR" -eq 11 ] && { [ "$MINOR" -lt 4 ] || { [ "$MINOR" -eq 4 ] && [ "$PATCH" -lt 1 ]; }; }; }; then
        die "TensorRT $TRT_VERSION has no DLA on Jetson (10.0-10.7 and 11.4.1+ with JetPack 7.2.2+ do)"
    fi
    [ "$ENGINE_PREC" != fp32 ] || die "DLA runs FP16/INT8 only: PRECISION=fp16 (TensorRT 10) or an FP16/INT8 bundle"
    [ "$BMIN" = "$BMAX" ] || die "DLA needs static shapes: give one batch size, e.g. BATCH=1"
    args+=(--useDLACore="$DLA_CORE" --allowGPUFallback)
fi

echo "+ $TRTEXEC ${args[*]}" >&2
"$TRTEXEC" "${args[@]}"
[ -s "$TMP" ] || die "trtexec wrote no engine"

# --- sidecar, then move the engine into place ------------------------------------------------
SIDE_TMP="$OUT.json.tmp.$$"
trap 'rm -f "$TMP" "$SIDE_TMP"' EXIT
python3 - "$BUNDLE" "$TMP" "$OUT" "$SIDE_TMP" <<PY
import hashlib, json, sys, time
from pathlib import Path
bundle, tmp, out, side_tmp = (Path(p) for p in sys.argv[1:5])
m = json.loads((bundle / "edgeseg.json").read_text())
flags = "${FLAGS[*]:-}".split()
gpu = Path("/proc/device-tree/model")
side = {
    "format": "edgeseg-tensorrt-engine", "sidecar_version": 1, "engine": out.name,
    "engine_sha256": hashlib.sha256(tmp.read_bytes()).hexdigest(),
    "preprocess": m["preprocess"], "classes": m["classes"], "outputs": m["outputs"],
    "precision": "$ENGINE_PREC",
    "tensorrt": {"version": "$MAJOR.$MINOR.$PATCH", "strongly_typed": $MAJOR >= 11,
                 "network_flags": ["STRONGLY_TYPED"] if $MAJOR >= 11 else [],
                 "builder_flags": [f.lstrip("-").upper() for f in flags] + (["GPU_FALLBACK"] if "$DLA_CORE" else [])},
    "gpu": {"name": gpu.read_bytes().split(b"\0")[0].decode() if gpu.is_file() else None},
    "dla_core": int("$DLA_CORE") if "$DLA_CORE" else None,
    "profile": {"input": "$INPUT_NAME", "min": [$BMIN, 3, $H, $W], "opt": [$BOPT, 3, $H, $W],
                "max": [$BMAX, 3, $H, $W]},
    "source": {"bundle": str(bundle.resolve()), "model": m["model"], "model_sha256": m["files"][m["model"]],
               "manifest_sha256": m.get("manifest_sha256"), "bundle_precision": m.get("precision"),
               "onnx_precision": "$ONNX_PREC"},
    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "built_with": "trtexec (export/jetson_build.sh)",
}
if "colors" in m:
    side["colors"] = m["colors"]
side_tmp.write_text(json.dumps(side, indent=2) + "\n")
PY
mv -f "$TMP" "$OUT"
mv -f "$SIDE_TMP" "$OUT.json"
echo "engine: $OUT ($ENGINE_PREC, TensorRT $TRT_VERSION, batch $BMIN..$BMAX at ${H}x${W}); sidecar: $OUT.json"
