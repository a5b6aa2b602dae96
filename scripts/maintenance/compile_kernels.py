"""Compile the fused BNTT + LIF kernels for a GPU architecture without a GPU, and report what
the compiler made of them: registers per thread, spilled bytes, compile seconds.

    python scripts/maintenance/compile_kernels.py [--steps 25] [--arch 90] [--dtype bf16]

Uses Triton's code generator and the ptxas that ships with it, so it runs on a CPU-only
machine; the tests run it with a small T to catch kernels the interpreter accepts and the
compiler does not.
"""
import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # real JIT functions, not the interpreter's

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from bntt.fused import kernels as fused  # noqa: E402

DATA_POINTERS = ("z_ptr", "s_ptr", "gs_ptr", "g_ptr")


def signature(kernel, constants, dtype):
    sig = {}
    for name in kernel.arg_names:
        if name in constants:
            sig[name] = "constexpr"
        elif name in DATA_POINTERS:
            sig[name] = f"*{dtype}"
        elif name == "codes_ptr":
            sig[name] = "*i8"
        elif name.endswith("_ptr"):
            sig[name] = "*fp64" if dtype == "fp64" else "*fp32"
        else:
            sig[name] = "i32"
    return sig


def ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([str(ptxas), f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}",
                          "-v", f.name, "-o", os.devnull], capture_output=True, text=True).stderr
    os.unlink(f.name)
    regs = [int(x) for x in re.findall(r"Used (\d+) registers", out)]
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", out)]
    return max(regs, default=-1), max(spills, default=0)


def kernels(steps: int, dtype: str = "bf16"):
    acc = tl.float64 if dtype == "fp64" else tl.float32
    yield fused._stats_kernel, {"BLOCK_R": 64, "BLOCK_C": 64, "ACC": acc}, 4
    for pool in (1, 2):  # as they are, and with the 2x2 average pool after them
        yield fused._forward_kernel, {"T": steps, "CODES": True, "POOL": pool, "BLOCK_R": 16,
                                      "BLOCK_C": 64, "ACC": acc}, 4
    for training, pool in ((True, 1), (False, 1), (True, 2)):
        yield fused._backward_scan_kernel, {"T": steps, "TRAINING": training, "SUMS": training,
                                            "POOL": pool, "BLOCK_R": 8, "BLOCK_C": 64,
                                            "ACC": acc}, 4
    yield fused._batchnorm_grad_kernel, {"BLOCK_R": 32, "BLOCK_C": 64, "ACC": acc}, 4


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp64"])
    args = parser.parse_args(argv)
    print(f"{'kernel':<22} {'constants':<64} {'regs':>5} {'spill B':>8} {'seconds':>8}")
    for kernel, constants, warps in kernels(args.steps, args.dtype):
        started = time.perf_counter()
        source = triton.compiler.ASTSource(fn=kernel, signature=signature(kernel, constants, args.dtype),
                                           constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", args.arch, 32),
                                  options={"num_warps": warps})
        regs, spill = ptxas_report(compiled.asm["ptx"], args.arch)
        shown = ",".join(f"{k}={v}" for k, v in constants.items() if k != "ACC")
        print(f"{kernel.fn.__name__:<22} {shown:<64} {regs:>5} {spill:>8} "
              f"{time.perf_counter() - started:>8.1f}")


if __name__ == "__main__":
    main()
