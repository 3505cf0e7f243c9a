"""The loss kernels' machine code for an H100, without a GPU: ahead-of-time compile, key-loop instruction counts,
and the issue-time estimate they give.

Triton compiles a kernel for sm_90 on any machine (its wheel ships ptxas, cuobjdump and nvdisasm); the SASS of the
key loop (the loop over key tiles that holds the tensor-core products) tells how many non-tensor instructions each
score element costs. An SM issues 4 warp instructions a clock (one per sub-partition), i.e. 128 thread
instructions, so a kernel whose key loop costs ``I`` instructions per element (per thread: the loop body divided by
the elements one thread holds per tile) cannot run faster than ``N^2 I / (128 SMs clock)``: the issue-time bound
that :func:`issue_time_us` gives beside the tensor-core floor ``6 N^2 d / peak`` (:func:`tensor_floor_us`).

Used by tests/test_contrastive_loss_op.py (``-k sass_budget``, ``-k compile_for_sm90``) and bench/ (the estimate
printed beside a GPU's measured time). Needs triton with its NVIDIA backend; never a GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

# An H100 SXM: 132 SMs at 1.83 GHz (the clock of its 989 dense bf16 TFLOP/s: 132 x 4096 FLOP/clk x 1.83 GHz).
H100_SMS = 132
H100_CLOCK_GHZ = 1.83
H100_BF16_TFLOPS = 989.4
ISSUE_PER_SM_CLOCK = 128  # thread instructions an SM issues a clock: 4 sub-partitions x 1 warp instruction x 32
SMEM_MAX = 227 * 1024  # an H100 block's largest dynamic shared memory

ALIGNED = [["tt.divisibility", 16]]  # torch's allocations are 16-byte aligned, as the launch specialises them
# the launcher's argument types by name (ecgfast.ops.contrastive_loss): ints i32, floats and statistics fp32, ids
# and view ids int64; "X" takes the row dtype, "Z" and "DZ" the embeddings' (fp32 in training)
_POINTER_TYPES = {"IDS": "*i32", "VIEWS": "*i32", "WEIGHTS": "*fp32", "LOSS": "*fp32", "LSE": "*fp32",
                  "WSUM": "*fp32", "PART": "*fp32", "G": "*fp32", "TERMS": "*fp32", "DPOS": "*fp32"}
_SCALAR_TYPES = {"N": "i32", "n_rows": "i32", "offset": "i32", "keys_per_split": "i32", "N_BUCKET": "i32",
                 "ROWS_BUCKET": "i32", "stride_z0": "i32", "n_splits": "i32", "scale_log2": "fp32",
                 "inv_tau": "fp32"}


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def compile_sm90(fn, dtypes: dict[str, str], consts: dict, num_warps: int, num_stages: int):
    """Triton's compiled kernel of the ``@triton.jit`` function ``fn`` for sm_90: argument types by name from the
    launcher's (``dtypes`` overrides, e.g. ``{"X": "*bf16", "Z": "*fp32"}``), ``consts`` the constexprs (those
    the kernel does not take are ignored, so that one case describes every version of a kernel)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(fn.arg_names)
    types = {**_POINTER_TYPES, **_SCALAR_TYPES, "DZ": dtypes.get("Z", "*fp32"), **dtypes}
    signature, attrs, constexprs = {}, {}, {}
    for i, name in enumerate(names):
        if name in consts:
            signature[name] = "constexpr"
            constexprs[(i,)] = consts[name]
        elif name in types:
            signature[name] = types[name]
            if types[name].startswith("*"):
                attrs[(i,)] = ALIGNED
        else:
            raise KeyError(f"{fn.__name__}: no type or constexpr given for argument {name!r}")
    source = ASTSource(fn=fn, signature=signature, attrs=attrs, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(compiled) -> tuple[int, int]:
    """(registers a thread, spilled bytes: stack + local) of a compiled kernel, from cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                               check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    spilled = sum(int(re.search(key + r":(\d+)", usage).group(1)) for key in ("STACK", "LOCAL"))
    return regs, spilled


def disassemble(compiled) -> list[str]:
    """The SASS of a compiled kernel, one entry per line of nvdisasm's output (labels and instructions)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([_bin("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
    return text.splitlines()


_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Loop:
    """One loop of a kernel's SASS: the instructions from its label to its backward branch, both included."""

    label: str
    start: int  # index of the body's first instruction in the kernel
    instructions: tuple[str, ...]

    @property
    def mma(self) -> int:
        """Tensor-core instructions in the body (HGMMA: Hopper's warpgroup MMA; HMMA: mma.sync)."""
        return sum(1 for i in self.instructions if re.search(r"\bH[G]?MMA\.", i))

    def opcodes(self) -> dict[str, int]:
        """Instruction count per opcode (predicates and modifiers dropped), most frequent first."""
        counts: dict[str, int] = {}
        for ins in self.instructions:
            op = ins.split()[1] if ins.startswith("@") else ins.split()[0]
            op = op.split(".")[0]
            counts[op] = counts.get(op, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def loops(sass: list[str]) -> list[Loop]:
    """Every loop of the SASS: a label with a later branch back to it (the body runs label..branch). Nested loops
    appear as their own entries too; a loop's instruction count includes any loop inside it once."""
    label_at: dict[str, int] = {}
    found = []
    instructions: list[str] = []
    for line in sass:
        if m := _LABEL.match(line.strip()):
            label_at[m.group(1)] = len(instructions)
            continue
        if m := _INSTRUCTION.match(line):
            instructions.append(m.group(1))
            if (b := _BRANCH.search(m.group(1))) and b.group(1) in label_at:
                start = label_at[b.group(1)]
                found.append(Loop(b.group(1), start, tuple(instructions[start:])))
    return found


def key_loops(sass: list[str]) -> list[Loop]:
    """The loops over key tiles: those with tensor-core products and no inner loop with them (the innermost)."""
    with_mma = [lp for lp in loops(sass) if lp.mma]

    def inside(inner: Loop, outer: Loop) -> bool:
        return inner is not outer and outer.start <= inner.start and (
            inner.start + len(inner.instructions) <= outer.start + len(outer.instructions))

    return [lp for lp in with_mma if not any(inside(other, lp) for other in with_mma)]


def elements_per_thread(block_m: int, block_n: int, num_warps: int) -> float:
    """Score elements one thread handles per key tile: BLOCK_M x BLOCK_N over the block's threads."""
    return block_m * block_n / (32 * num_warps)


def issue_time_us(instructions_per_element: float, n: int, sms: int = H100_SMS,
                  clock_ghz: float = H100_CLOCK_GHZ) -> float:
    """Issue-time bound of N^2 score elements at this many instructions each: N^2 I / (128 SMs clock), in us."""
    return n * n * instructions_per_element / (ISSUE_PER_SM_CLOCK * sms * clock_ghz * 1e3)


def tensor_floor_us(n: int, d: int, tflops: float = H100_BF16_TFLOPS) -> float:
    """The tensor-core floor of the loss forward + backward: 6 N^2 d FLOPs at the dense bf16 peak, in us."""
    return 6 * n * n * d / (tflops * 1e6)


def instruction_budget(n: int, d: int, times_floor: float = 2.0) -> float:
    """Instructions per score element, forward and backward together, whose issue time is ``times_floor`` times
    the tensor-core floor at (N, d) on an H100: the budget of the SASS test (48.0 at N = 8192, d = 128, 2x)."""
    return times_floor * tensor_floor_us(n, d) * ISSUE_PER_SM_CLOCK * H100_SMS * H100_CLOCK_GHZ * 1e3 / (n * n)


# ---------------------------------------------------------------------------------------------------------------
# The loss kernels' key loops

# The two cases of the budget (issue 24): the benchmark's (one id kind, no view ids: two views of N / 2 ECGs) and
# pretraining's (ECG and patient ids, view ids)
LOSS_CASES = {"benchmark": {"NUM_KINDS": 1, "HAS_VIEWS": False}, "training": {"NUM_KINDS": 2, "HAS_VIEWS": True}}


@dataclass(frozen=True)
class KeyLoopCost:
    """Instructions per score element of one loss kernel's key loop, for one config: ``unmasked`` the loops over
    tiles that hold neither the diagonal nor the end of the keys (nearly all of them at large N), ``masked`` the
    others; with the registers and spilled bytes of the compiled kernel."""

    which: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    unmasked: float
    masked: float
    registers: int
    spilled: int

    def weighted(self, n: int) -> float:
        """Instructions per element over all tiles at N keys (N a multiple of BLOCK_N): each row block masks the
        max(1, BLOCK_M / BLOCK_N) key tiles that meet its diagonal, of N / BLOCK_N."""
        tiles = max(1, n // self.block_n)
        masked = min(tiles, max(1, self.block_m // self.block_n))
        return ((tiles - masked) * self.unmasked + masked * self.masked) / tiles


def loss_key_loop_cost(which: str, case: str, config, d: int = 128, dtype: str = "bf16",
                       fixed_shift: bool = True) -> KeyLoopCost:
    """Compile loss kernel ``which`` ("fwd" / "bwd") for sm_90 with a ``triton.Config`` in ``case`` (LOSS_CASES)
    and count its key loops: the four stretches of the kernel's tile loop (:func:`_tile_bounds` of the kernel),
    unmasked (first and third) and masked (second and fourth). Whole-d tiles only (d <= 128)."""
    from ecgfast.kernels import contrastive_loss as k

    d_pad = max(16, 1 << (d - 1).bit_length())
    if d_pad > k.WHOLE_D_MAX:
        raise ValueError(f"key-loop counts are for whole-d tiles (d <= {k.WHOLE_D_MAX}), got d = {d}")
    kernel = {"fwd": k._mp_contrastive_fwd_kernel, "bwd": k._mp_contrastive_bwd_kernel}[which].fn
    m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    consts = {"D": d, "D_PAD": d_pad, "BLOCK_D": d_pad, "BLOCK_DX": d_pad, "SINGLE": True, "NORMALIZE": True,
              "FIXED_SHIFT": fixed_shift, "DOT": "tf32" if dtype == "fp32" else "ieee", "stride_z1": 1,
              "BLOCK_M": m, "BLOCK_N": n, **LOSS_CASES[case]}
    compiled = compile_sm90(kernel, {"X": f"*{dtype}", "Z": "*fp32"}, consts, config.num_warps, config.num_stages)
    found = key_loops(disassemble(compiled))
    if len(found) != 4:
        raise RuntimeError(f"{which}: expected the 4 stretches of the key loop in the SASS, found {len(found)}")
    per = elements_per_thread(m, n, config.num_warps)
    costs = [len(lp.instructions) / per for lp in found]
    regs, spilled = resource_usage(compiled)
    return KeyLoopCost(which, m, n, config.num_warps, config.num_stages, max(costs[0], costs[2]),
                       max(costs[1], costs[3]), regs, spilled)


def loss_costs(case: str, d: int = 128, n: int = 8192, dtype: str = "bf16") -> dict[str, list[KeyLoopCost]]:
    """:func:`loss_key_loop_cost` of every tensor-core config with >= 64 rows (Hopper's warpgroup MMA: the tiles an
    H100 autotunes to at large N) the launcher offers at (N, d), for the forward and the backward."""
    from ecgfast.kernels import contrastive_loss as k

    d_pad = max(16, 1 << (d - 1).bit_length())
    elem = 4 if dtype == "fp32" else 2
    return {which: [loss_key_loop_cost(which, case, c, d, dtype) for c in k.launch_configs(which, d_pad, elem, n)
                    if c.kwargs["BLOCK_M"] >= 64] for which in ("fwd", "bwd")}


def issue_estimate_us(case: str, n: int, d: int = 128) -> float:
    """The issue-time bound of one forward + backward at (N, d) on an H100 with the fewest-instruction config of
    each kernel (an issue-bound kernel's fastest): what bench/ prints beside a GPU's measured time."""
    costs = loss_costs(case, d, n)
    return issue_time_us(sum(min(c.weighted(n) for c in costs[w]) for w in ("fwd", "bwd")), n)
