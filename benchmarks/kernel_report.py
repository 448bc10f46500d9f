"""The compiler's report on the Triton kernels for Hopper (sm_90), made without a GPU.

Compiles every kernel for each launch configuration that ``kernels/tuning.py`` may pick, with
Triton's own toolchain (its bundled ptxas and cuobjdump), and prints registers per thread, stack
bytes (spills to local memory), shared memory, the number of Hopper matrix instructions (HGMMA),
TMA loads (UTMALDG), register-count switches of warp specialisation (USETMAXREG) and local
loads/stores (LDL/STL) in the SASS. Spills and few HGMMAs predict slow kernels before any device
time is spent.

    python benchmarks/kernel_report.py [--head-dims 64,128] [--dtype bf16] [--causal] [--map]

The GPU machine runs Triton 3.6 and the local one may run another version, whose compiler
decides differently (v1's dQ kernel at d = 128 spilled 40-680 B under 3.6, 0-40 under 3.9). To report for 3.6
exactly, install it beside the project's and put it first on the path:

    pip install --no-deps --target /tmp/triton36 triton==3.6.0
    PYTHONPATH=/tmp/triton36:src python benchmarks/kernel_report.py
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import warnings

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from selfattention.kernels import tuning

PTR = {
    "Mask": "*u8",
    "Tiles": "*u8",
    "Lens": "*i64",
    "Lse": "*fp32",
    "Delta": "*fp32",
    "MapCount": "*i32",
    "MapIndex": "*i32",
    "MapTile": "*i32",
}
POINTERS = ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV", *PTR)
FLOATS = ("qk_scale", "scale")
TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def compile_one(fn, dtype: str, constexprs: dict, warps: int, stages: int):
    names = fn.arg_names
    signature = {}
    for n in names:
        if n in constexprs:
            signature[n] = "constexpr"
        elif n in POINTERS:
            signature[n] = PTR.get(n, f"*{dtype}")
        else:
            signature[n] = "fp32" if n in FLOATS else "i32"
    src = ASTSource(
        fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()}
    )
    return triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages}
    )


def usage(kernel) -> dict[str, int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    tool = os.path.join(TOOLS, "cuobjdump")
    res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    sass = subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    return {
        "regs": int(m.group(1)),
        "stack": int(m.group(2)),
        "shared": kernel.metadata.shared,
        "hgmma": sass.count("HGMMA"),
        "tma": sass.count("UTMALDG"),
        "setmaxreg": sass.count("USETMAXREG"),
        "ldl_stl": sass.count("LDL") + sass.count("STL"),
    }


def rows(kind: str, d_pad: int, a) -> list[tuple[str, tuning.Cfg, dict]]:
    """(label, config, constexprs) for every candidate of ``kind`` and each load path."""
    out = []
    for c in tuning.candidates(kind, d_pad):
        for desc in (False, True):
            if c.warp_spec and not desc:
                continue  # warp specialisation is only a candidate with descriptors
            if a.only_desc and not desc:
                continue
            const = dict(
                CAUSAL=a.causal,
                HAS_MASK=False,
                HAS_LENS=False,
                HAS_MAP=a.map,
                MAP_M=128 if a.map else 0,
                MAP_N=128 if a.map else 0,
                D_PAD=d_pad,
                PRECISION="tf32",
                BLOCK_M=c.BLOCK_M,
                BLOCK_N=c.BLOCK_N,
                USE_DESC=desc,
            )
            if kind == "fwd":
                const["WARP_SPEC"] = c.warp_spec
            path = "descriptors" if desc else "pointers"
            label = f"{kind} ({path}{', warp-specialised' if c.warp_spec else ''})"
            out.append((label, c, const))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--causal", action="store_true", help="the causal variant (default: not causal)")
    ap.add_argument("--map", action="store_true", help="the block-map variant (128 × 128 map blocks)")
    ap.add_argument("--kernels", default="fwd,dkdv,dq")
    ap.add_argument("--only-desc", action="store_true", help="only the tensor-descriptor load path")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(
        f"# Triton {triton.__version__}, sm_90, {a.dtype}, causal={a.causal}, block map={a.map}, "
        f"no mask or lengths\n"
    )
    print(
        "| kernel | D_PAD | BLOCK_M | BLOCK_N | warps | stages | regs | stack B | shared B "
        "| HGMMA | UTMALDG | USETMAXREG | LDL/STL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d_pad in (int(x) for x in a.head_dims.split(",")):
        for kind in a.kernels.split(","):
            for label, c, const in rows(kind, d_pad, a):
                head = f"| {label} | {d_pad} | {c.BLOCK_M} | {c.BLOCK_N} | {c.warps} | {c.stages} |"
                try:
                    u = usage(compile_one(tuning.KERNELS[kind], a.dtype, const, c.warps, c.stages))
                except Exception as e:  # a config the compiler refuses (e.g. out of shared memory)
                    msg = " ".join(str(e).split())[:80]
                    print(f"{head} fails: {msg} | | | | | | |", flush=True)
                    continue
                print(
                    f"{head} {u['regs']} | {u['stack']} | {u['shared']} | {u['hgmma']} | {u['tma']} | "
                    f"{u['setmaxreg']} | {u['ldl_stl']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
