"""The compiler's report on the Triton kernels for Hopper (sm_90), made without a GPU.

Compiles every kernel for each launch configuration that ``kernels/launch.py`` may pick, with
Triton's own toolchain (its bundled ptxas and cuobjdump), and prints registers per thread, stack
bytes (spills to local memory), shared memory, the number of Hopper matrix instructions (HGMMA)
and local loads/stores (LDL/STL) in the SASS. Spills and few HGMMAs predict slow kernels before
any device time is spent.

    python benchmarks/kernel_report.py [--head-dims 64,128] [--dtype bf16]
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

from selfattention.kernels import flash
from selfattention.kernels.launch import _configs

PTR = {"Mask": "*u8", "Lens": "*i64", "Lse": "*fp32", "Delta": "*fp32"}
POINTERS = ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV", *PTR)
FLOATS = ("qk_scale", "scale")
KERNELS = {
    "fwd": (flash._fwd_kernel, "fwd"),
    "dkdv": (flash._bwd_dkdv_kernel, "dkdv"),
    "dq": (flash._bwd_dq_kernel, "dq"),
}
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
        "ldl_stl": sass.count("LDL") + sass.count("STL"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--causal", action="store_true", help="the causal variant (default: not causal)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"# Triton {triton.__version__}, sm_90, {a.dtype}, causal={a.causal}, no mask or lengths\n")
    print(
        "| kernel | D_PAD | BLOCK_M | BLOCK_N | warps | stages | regs | stack B | shared B "
        "| HGMMA | LDL/STL |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    variants = {"fwd": [False, True]}  # the forward with pointer tiles, then with tensor descriptors
    for d_pad in (int(x) for x in a.head_dims.split(",")):
        for name, (fn, kind) in KERNELS.items():
            for desc, (m, n, w, s) in (
                (x, c) for x in variants.get(name, [None]) for c in _configs(d_pad, kind)
            ):
                const = dict(
                    CAUSAL=a.causal,
                    HAS_MASK=False,
                    HAS_LENS=False,
                    D_PAD=d_pad,
                    PRECISION="tf32",
                    BLOCK_M=m,
                    BLOCK_N=n,
                )
                if desc is not None:
                    const["USE_DESC"] = desc
                    name_shown = f"{name} ({'descriptors' if desc else 'pointers'})"
                else:
                    name_shown = name
                try:
                    u = usage(compile_one(fn, a.dtype, const, w, s))
                except Exception as e:  # a config the compiler refuses (e.g. out of shared memory)
                    print(
                        f"| {name_shown} | {d_pad} | {m} | {n} | {w} | {s} | "
                        f"fails: {str(e).splitlines()[0][:60]} |"
                    )
                    continue
                print(
                    f"| {name_shown} | {d_pad} | {m} | {n} | {w} | {s} | {u['regs']} | {u['stack']} | "
                    f"{u['shared']} | {u['hgmma']} | {u['ldl_stl']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
