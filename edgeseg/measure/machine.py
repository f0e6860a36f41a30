"""What produced the numbers: :func:`machine_info` describes the machine a timing was taken on.

CPU model and the instruction-set flags that matter for inference (AVX2/AVX-512/VNNI/AMX,
NEON/dot-product/FP16), usable cores (affinity and cgroup quota), RAM in GB (10^9 bytes),
library versions, ONNX Runtime providers, NVIDIA GPUs (``nvidia-smi``) and, on a Jetson, the
L4T/JetPack release and power mode. :func:`usable_cores` and :func:`load_average` feed the
noise check of ``edgeseg.measure.timing``. Every probe is best effort: a probe that fails
reports ``None`` and never raises.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def _probe(fn, *args, default=None):
    """Run one probe; never raise (a probe that fails reports ``default``)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - probes are best effort by design
        log.debug("probe %s failed: %s", getattr(fn, "__name__", fn), exc)
        return default


def _read(path: str) -> str | None:
    p = Path(path)
    if not p.is_file():
        return None
    return p.read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


_FLAG_EXACT = {"avx", "avx2", "fma", "f16c", "neon", "asimd", "asimdhp", "asimddp", "fphp", "fp16",
               "i8mm", "bf16", "sve", "sve2", "sse4_2", "dotprod"}


def _interesting_flag(f: str) -> bool:
    return (f in _FLAG_EXACT or f.startswith("avx512") or f.startswith("amx") or "vnni" in f
            or "fp16" in f)


def _cpu() -> dict:
    info: dict = {"machine": platform.machine(), "model": None, "flags": []}
    text = _read("/proc/cpuinfo")
    if text:
        fields: dict[str, str] = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields.setdefault(k.strip().lower(), v.strip())
        info["model"] = (fields.get("model name") or fields.get("hardware") or fields.get("cpu model")
                         or fields.get("processor") or None)
        if "cpu part" in fields and not info["model"]:
            info["model"] = f"ARM implementer {fields.get('cpu implementer')} part {fields['cpu part']}"
        flags = (fields.get("flags") or fields.get("features") or "").split()
        info["flags"] = sorted({f for f in flags if _interesting_flag(f)})
    if not info["model"] and sys.platform == "darwin":
        info["model"] = _probe(_run, ["sysctl", "-n", "machdep.cpu.brand_string"])
        if platform.machine() == "arm64":
            info["flags"] = ["asimd", "fp16", "neon"]
    if not info["model"]:
        info["model"] = platform.processor() or None
    fl = set(info["flags"])
    info["has"] = {
        "avx2": "avx2" in fl,
        "avx512": any(f.startswith("avx512") for f in fl),
        "vnni": any("vnni" in f for f in fl),
        "neon": bool(fl & {"neon", "asimd"}),
        "fp16": bool(fl & {"f16c", "fphp", "asimdhp", "fp16", "avx512_fp16"}),
    }
    return info


def _cores() -> dict:
    out: dict = {"logical": os.cpu_count()}
    if hasattr(os, "sched_getaffinity"):
        out["affinity"] = len(os.sched_getaffinity(0))
    else:
        out["affinity"] = os.cpu_count()
    cpu_max = _read("/sys/fs/cgroup/cpu.max")
    if cpu_max:
        quota, _, period = cpu_max.partition(" ")
        out["cgroup_limit"] = None if quota == "max" else round(int(quota) / int(period or 100000), 2)
    return out


def _ram_bytes() -> int | None:
    text = _read("/proc/meminfo")
    if text:
        m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
        if m:
            return int(m.group(1)) * 1024
    if sys.platform == "darwin":
        v = _probe(_run, ["sysctl", "-n", "hw.memsize"])
        if v:
            return int(v)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    out: dict = {"python": platform.python_version(), "python_impl": platform.python_implementation()}
    out["numpy"] = np.__version__
    for key, dists in (("edgeseg", ["edgeseg"]), ("onnxruntime", ["onnxruntime", "onnxruntime-gpu"]),
                       ("torch", ["torch"]), ("transformers", ["transformers"]), ("onnx", ["onnx"]),
                       ("opencv", ["opencv-python-headless", "opencv-python"]),
                       ("tensorrt", ["tensorrt", "tensorrt-cu12", "tensorrt-cu11"])):
        v = None
        for d in dists:
            v = _probe(_dist_version, d)
            if v:
                break
        out[key] = v
    # Jetson / system installs of onnxruntime and TensorRT come without package metadata.
    if out["onnxruntime"] is None:
        out["onnxruntime"] = _probe(lambda: __import__("onnxruntime").__version__)
    if out["tensorrt"] is None:
        out["tensorrt"] = _probe(lambda: __import__("tensorrt").__version__)
    torch = sys.modules.get("torch")  # only describe torch's build if something already imported it
    if torch is not None:
        out["torch_cuda"] = _probe(lambda: torch.version.cuda)
        out["torch_threads"] = _probe(torch.get_num_threads)
        out["cudnn"] = _probe(lambda: torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    return out


def _ort_providers() -> list[str] | None:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _gpus() -> list[dict] | None:
    text = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                 "--format=csv,noheader"])
    if not text:
        return None
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0]:
            parts += [None] * (4 - len(parts))
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
    return gpus or None


# L4T release -> JetPack (NVIDIA's published pairs; the first match on the prefix wins).
_JETPACK = (("36.4", "6.1/6.2"), ("36.3", "6.0"), ("36.2", "6.0 DP"), ("35.6", "5.1.4"), ("35.5", "5.1.3"),
            ("35.4", "5.1.2"), ("35.3", "5.1.1"), ("35.2", "5.1"), ("35.1", "5.0.2"), ("32.7", "4.6.x"),
            ("32.6", "4.6"), ("32.5", "4.5.x"), ("32.4", "4.4.x"))


def parse_tegra_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 3.0, GCID: ...' -> '36.3.0'."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def jetpack_for(l4t: str | None) -> str | None:
    if not l4t:
        return None
    for prefix, jp in _JETPACK:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jp
    return None


def parse_nvpmodel(text: str | None) -> str | None:
    """'NV Power Mode: MAXN\\n0' -> 'MAXN (0)'."""
    if not text:
        return None
    m = re.search(r"Power Mode:\s*(\S+)", text)
    mode_id = next((ln.strip() for ln in text.splitlines() if ln.strip().isdigit()), None)
    if not m:
        return text.splitlines()[0].strip() or None
    return f"{m.group(1)} ({mode_id})" if mode_id else m.group(1)


def _jetson() -> dict | None:
    release = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model")
    if release is None and not (model and ("jetson" in model.lower() or "nvidia" in model.lower())):
        return None
    l4t = parse_tegra_release(release or "")
    jp = None
    dpkg = _probe(_run, ["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    if dpkg:
        jp = dpkg.split("-")[0] or None
    return {"model": model, "l4t": l4t, "jetpack": jp or jetpack_for(l4t),
            "power_mode": parse_nvpmodel(_probe(_run, ["nvpmodel", "-q"]))}


def machine_info() -> dict:
    """What produced the numbers. Every probe is guarded: this never raises."""
    return {
        "hostname": _probe(platform.node),
        "os": _probe(lambda: f"{platform.system()} {platform.release()}"),
        "platform": _probe(platform.platform),
        "cpu": _probe(_cpu, default={}),
        "cores": _probe(_cores, default={}),
        "ram_gb": _probe(lambda: round(_ram_bytes() / 1e9, 2)),
        "versions": _probe(_versions, default={}),
        "onnxruntime_providers": _probe(_ort_providers),
        "gpus": _probe(_gpus),
        "jetson": _probe(_jetson),
    }


def usable_cores() -> int:
    """Cores this process may run on: the affinity set, capped by a cgroup CPU quota."""
    c = _probe(_cores, default={}) or {}
    n = c.get("affinity") or os.cpu_count() or 1
    if c.get("cgroup_limit"):
        n = min(n, max(1, round(c["cgroup_limit"])))
    return int(n)


def load_average() -> float | None:
    """The 1-minute load average (runnable + uninterruptible tasks), or None where unknown."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None
