"""The decode expert GEMV's K loops in sm_90 machine code, on any machine (no GPU): instructions per loop
iteration by opcode, and registers per thread (issue 27).

    python benchmarks/sass_decode_moe.py [--fmt fp4|fp8] [--tiles 16x256,16x1024] [--warps 4]

Why: the FP4 expert GEMV is bound by the instructions an SM issues, not by bytes, so the instruction count
of its inner loop is what to read before spending device time. Triton compiles the kernels for an H100
target with its bundled ptxas (the launcher's argument divisibility assumed: pointers, H, I and strides
multiples of 16, as for V4-Flash's 4096 x 2048 experts); nvdisasm gives the SASS. A loop is a label up to
the branch back to it; per FP4 loop iteration a thread handles BLOCK_N * BLOCK_K / 8 / (32 * warps) words.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, not the interpreter's

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from v4.kernels import decode_moe  # noqa: E402

OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T\d]\s+)?([A-Z0-9_]+)", re.M)


def signature(kernel: str, fmt: str) -> tuple[dict[str, str], list[str]]:
    """(argument types, the arguments assumed divisible by 16) of `kernel` as the launcher calls it."""
    weight = "*i32" if fmt == "fp4" else "*fp8e4nv"
    if kernel == "_gate_up_kernel":
        pointers = dict(x_ptr="*bf16", ids_ptr="*i32", w1_ptr=weight, w3_ptr=weight, s1_ptr="*u8", s3_ptr="*u8",
                        h_ptr="*bf16")
        scalars = dict(P="i32", TOPK="i32", H="i32", I="i32", limit="fp32")
    else:
        pointers = dict(h_ptr="*bf16", ids_ptr="*i32", rw_ptr="*fp32", w2_ptr=weight, s2_ptr="*u8", y_ptr="*bf16",
                        out_ptr="*bf16", add_ptr="*bf16", counter_ptr="*i32")
        scalars = dict(P="i32", TOPK="i32", H="i32", I="i32")
    strides = {name: "i64" for name in ("stride_we", "stride_wn", "stride_se", "stride_sn")}
    aligned = [*pointers, "H", "I", *strides]
    return {**pointers, **scalars, **strides}, aligned


def compile_sass(kernel: str, fmt: str, block_n: int, block_k: int, warps: int) -> tuple[str, bytes]:
    """(SASS text, cubin) of one kernel at one tile, one token (BLOCK_R = 1), e8m0 scales."""
    types, aligned = signature(kernel, fmt)
    constants = dict(FMT=2 if fmt == "fp4" else 1, SCALE_E8M0=True, ROUND_W=False, INTERPRET=False, BLOCK_P=8,
                     BLOCK_R=1, BLOCK_N=block_n, BLOCK_K=block_k, WHOLE_GROUPS=True)
    if kernel == "_down_kernel":
        constants.update(SUM=True, ADD=True)
    names = list(types)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    source = ASTSource(fn=getattr(decode_moe, kernel), signature={**types, **{c: "constexpr" for c in constants}},
                       constexprs=constants, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([str(tools / "nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    return sass, compiled.asm["cubin"]


def loops(sass: str) -> list[collections.Counter]:
    """Opcode counts of each loop: from a label to the branch back to it."""
    lines = sass.splitlines()
    labels = {line.rstrip(":"): i for i, line in enumerate(lines) if re.match(r"^\.L_x_\d+:", line)}
    found = []
    for i, line in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i) < i - 1:
            found.append(collections.Counter(OPCODE.findall("\n".join(lines[labels[m.group(1)]:i + 1]))))
    return found


def registers(cubin: bytes) -> str:
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    return " ".join(re.findall(r"REG:\d+|STACK:\d+|SHARED:\d+|LOCAL:\d+", usage))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fmt", default="fp4", choices=("fp4", "fp8"))
    parser.add_argument("--tiles", default="16x256,16x1024", help="BLOCK_NxBLOCK_K, comma-separated")
    parser.add_argument("--warps", type=int, default=4)
    args = parser.parse_args()
    for tile in args.tiles.split(","):
        block_n, block_k = (int(v) for v in tile.split("x"))
        words = block_n * block_k // 8 // (32 * args.warps) if args.fmt == "fp4" else 0
        for kernel in ("_gate_up_kernel", "_down_kernel"):
            sass, cubin = compile_sass(kernel, args.fmt, block_n, block_k, args.warps)
            per_thread = f", {words} FP4 words a thread per K step" if words else ""
            print(f"{kernel} {args.fmt} {tile} warps={args.warps}{per_thread}: {registers(cubin)}")
            for counts in loops(sass):  # the K loops first (gate and up, or down), then the slot-sum loops
                print(f"  loop: {sum(counts.values())} instructions: {dict(counts.most_common(10))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
