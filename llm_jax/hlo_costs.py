"""What one device does in a compiled step, read from XLA's optimized HLO text.

XLA's own `cost_analysis()` counts each loop body once, so for a model whose layers run in a
`scan` (and microbatches in a loop) it reports a fraction of the step. This reader walks the
optimized module instead and weights every computation by how often it runs: a `while` body
by its trip count, everything it calls by the same factor. The trip count is XLA's
`known_trip_count` backend config where the loop has one, else the constant N of its
condition's `counter < N`. It counts

- matmul FLOPs: `dot`s and `convolution`s (TPU's XLA lowers matmuls to convolutions), with
  the padding of convolution windows handled as XLA's cost analysis does;
- HBM traffic: operands and results of the instructions that run as kernels (fusions and
  unfused ops), leaving out buffers placed in on-chip memory (`S(1)`) and pure bookkeeping;
- collective traffic: bytes each device sends for every all-gather, reduce-scatter,
  all-reduce, all-to-all and collective-permute, by ring algorithms' counts;
- custom calls (Pallas/Mosaic kernels such as splash attention), by name and operand shapes:
  their FLOPs are not in the HLO, so a caller estimates them (`roofline`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
CALLEES = re.compile(r"\b(condition|body|calls|to_apply|true_computation|false_computation)"
                     r"=%([\w.\-]+)")
BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
               "collective-permute")
# Ops that move no data through HBM themselves (their callees or aliases do).
BOOKKEEPING = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
               "call", "conditional", "after-all", "partition-id", "replica-id", "iota",
               "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
               "async-done", "opt-barrier", "add-dependency"}


@dataclasses.dataclass(frozen=True)
class Array:
    dtype: str
    dims: tuple[int, ...]
    on_chip: bool  # placed in the alternate (on-chip) memory space, S(1)

    @property
    def bytes(self) -> float:
        return math.prod(self.dims) * DTYPE_BYTES.get(self.dtype, 4)


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    shape: list[Array]  # one array, or a tuple's arrays
    operands: list[str]
    arguments: str  # the text between the opcode's parentheses (a constant's value)
    attributes: str


@dataclasses.dataclass(frozen=True)
class CustomCall:
    name: str  # the instruction's name, e.g. splash_mha_fwd_segmented_residuals.1
    operands: tuple[Array, ...]  # the array operands
    count: float  # times it runs per step


@dataclasses.dataclass(frozen=True)
class StepCosts:
    """Per device, per step, every loop iteration counted."""

    matmul_flops: float
    hbm_bytes: float
    collective_bytes: dict[str, float]  # by collective kind: bytes each device sends
    custom_calls: tuple[CustomCall, ...]
    unknown_loops: int  # while loops whose trip count could not be read (counted once)

    @property
    def total_collective_bytes(self) -> float:
        return sum(self.collective_bytes.values())


def _arrays(text: str) -> list[Array]:
    return [Array(dtype, tuple(int(d) for d in dims.split(",") if d),
                  "S(1)" in (layout or ""))
            for dtype, dims, layout in ARRAY.findall(text) if dtype in DTYPE_BYTES]


def _closing_paren(text: str, start: int = 0) -> int:
    """Index of the `)` that closes the `(` just before `text[start]`, len(text) if none does:
    tuple types and operand lists nest parentheses, so the first `)` may be an inner one."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def _split_type(rest: str) -> tuple[str, str]:
    """`(f32[2], s32[]) while(...), attrs` -> (type text, the rest after it)."""
    if not rest.startswith("("):
        head, _, tail = rest.partition(" ")
        return head, tail
    end = _closing_paren(rest, 1)
    return rest[:end + 1], rest[end + 2:]


def _parse_instruction(line: str) -> Instruction | None:
    match = INSTRUCTION.match(line)
    if not match:
        return None
    name, rest = match.groups()
    type_text, rest = _split_type(rest)
    opcode, _, rest = rest.partition("(")
    end = _closing_paren(rest)
    operands = re.findall(r"%([\w.\-]+)", rest[:end])
    return Instruction(name, opcode.strip(), _arrays(type_text), operands, rest[:end],
                       rest[end + 1:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: its instructions}, the entry computation's name)."""
    computations: dict[str, list[Instruction]] = {}
    entry, current, pending = "", None, ""

    def flush() -> None:
        instruction = _parse_instruction(pending) if pending else None
        if instruction and current is not None:
            computations[current].append(instruction)

    for line in text.splitlines():
        header = HEADER.match(line) if current is None else None
        if header:
            current, pending = header.group(2), ""
            computations[current] = []
            if header.group(1):
                entry = current
        elif current is not None and line.rstrip() == "}":
            flush()
            current, pending = None, ""
        elif current is not None and INSTRUCTION.match(line):
            flush()
            pending = line
        elif current is not None:
            pending += " " + line.strip()  # an attribute (a kernel's metadata) spans lines
    if not entry:
        raise ValueError("no ENTRY computation in this HLO text")
    return computations, entry


def _trip_count(loop: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
    """XLA's `known_trip_count` where it records one, else N of a `counter < N` condition
    with a constant N (how `scan` and `fori_loop` lower), the counter starting at 0."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attributes)
    if known:
        return int(known.group(1))
    condition = computations.get(dict(CALLEES.findall(loop.attributes)).get("condition", ""), [])
    constants = {ins.name: int(ins.arguments) for ins in condition
                 if ins.opcode == "constant" and re.fullmatch(r"-?\d+", ins.arguments.strip())}
    for ins in condition:
        callee = dict(CALLEES.findall(ins.attributes)).get("calls")
        compares = [ins] if ins.opcode == "compare" else [
            inner for inner in computations.get(callee or "", []) if inner.opcode == "compare"]
        if any("direction=LT" in c.attributes for c in compares):
            bounds = [constants[name] for name in ins.operands if name in constants]
            if len(bounds) == 1:
                return bounds[0]
    return None


def _calls(computations: dict[str, list[Instruction]]
           ) -> tuple[dict[str, list[tuple[str, float | None]]], set[str]]:
    """({caller: [(callee, runs per call or None for a loop of unknown trip count)]}, the
    computations fused into kernels)."""
    edges: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
    fused = set()
    for name, instructions in computations.items():
        for ins in instructions:
            callees = CALLEES.findall(ins.attributes)
            if ins.opcode == "while":
                edges[name].append((dict(callees)["body"], _trip_count(ins, computations)))
                continue
            for role, callee in callees:
                if role == "to_apply":
                    continue  # a scalar reducer, applied inside its op
                if ins.opcode != "call":
                    fused.add(callee)
                edges[name].append((callee, 1.0))
            branches = BRANCHES.search(ins.attributes)
            for callee in re.findall(r"%([\w.\-]+)", branches.group(1) if branches else ""):
                edges[name].append((callee, 1.0))  # every branch counted: an upper bound
    return edges, fused


def _run_counts(computations: dict[str, list[Instruction]], entry: str
                ) -> tuple[dict[str, float], set[str], int]:
    """(times each computation runs per step, the computations fused into kernels, the number
    of loops of unknown trip count, counted as running once)."""
    edges, fused = _calls(computations)
    order, seen = [], set()

    def visit(name: str) -> None:  # depth-first post-order: callees before callers
        seen.add(name)
        for callee, _ in edges.get(name, ()):
            if callee not in seen:
                visit(callee)
        order.append(name)

    visit(entry)
    counts: dict[str, float] = defaultdict(float)
    counts[entry] = 1.0
    unknown = 0
    for name in reversed(order):
        for callee, factor in edges.get(name, ()):
            unknown += factor is None
            counts[callee] += counts[name] * (1.0 if factor is None else factor)
    return counts, fused, unknown


def _dot_flops(ins: Instruction, shapes: dict[str, Array]) -> float:
    lhs = shapes.get(ins.operands[0]) if ins.operands else None
    found = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attributes)
    if lhs is None or not ins.shape:
        return 0.0
    contracted = math.prod(lhs.dims[int(d)] for d in (found.group(1) if found else "").split(",")
                           if d)
    return 2.0 * math.prod(ins.shape[0].dims) * contracted


def _valid_pairs(out_size: int, in_size: int, window: int, stride: int, pad_low: int,
                 lhs_dilation: int, rhs_dilation: int) -> int:
    """(output position, window position) pairs that read a real input element."""
    total = 0
    for k in range(window):
        offset = k * rhs_dilation - pad_low  # input index of output 0 at this window position
        if lhs_dilation == 1:
            low = 0 if offset >= 0 else (stride - 1 - offset) // stride
            high = min(out_size - 1, (in_size - 1 - offset) // stride)
            total += max(0, high - low + 1)
        else:
            total += sum(1 for o in range(out_size)
                         if (o * stride + offset) % lhs_dilation == 0
                         and 0 <= (o * stride + offset) // lhs_dilation < in_size
                         and o * stride + offset >= 0)
    return total


def _window_field(window: str, key: str, count: int, default: int) -> list[int]:
    """One field of a convolution's `window={size=1x4 pad=0_0x3_3 ...}`, per spatial dim."""
    found = re.search(rf"\b{key}=([0-9x_\-]+)", window)
    if not found:
        return [default] * count
    return [int(part.split("_")[0]) for part in found.group(1).split("x")]


def _convolution_flops(ins: Instruction, shapes: dict[str, Array]) -> float:
    """2 x output elements x input features per output x valid window positions, as XLA's
    HloCostAnalysis counts a convolution."""
    if len(ins.operands) < 2 or not ins.shape:
        return 0.0
    lhs, rhs = shapes.get(ins.operands[0]), shapes.get(ins.operands[1])
    labels = re.search(r"dim_labels=([0-9a-z]+)_([0-9a-z]+)->([0-9a-z]+)", ins.attributes)
    if lhs is None or rhs is None or labels is None:
        return 0.0
    lhs_labels, rhs_labels, out_labels = labels.groups()
    out = ins.shape[0].dims
    spatial = sorted(c for c in rhs_labels if c.isdigit())  # the window lists dims 0, 1, ...
    window = re.search(r"window=\{([^}]*)\}", ins.attributes)
    window_text = window.group(1) if window else ""
    n = len(spatial)
    sizes = _window_field(window_text, "size", n, 1)
    strides = _window_field(window_text, "stride", n, 1)
    pads = _window_field(window_text, "pad", n, 0)
    lhs_dil = _window_field(window_text, "lhs_dilate", n, 1)
    rhs_dil = _window_field(window_text, "rhs_dilate", n, 1)
    macs_per_output = rhs.dims[rhs_labels.index("i")]
    non_spatial_out = math.prod(out[i] for i, c in enumerate(out_labels) if not c.isdigit())
    pairs = 1
    for j, digit in enumerate(spatial):
        pairs *= _valid_pairs(out[out_labels.index(digit)], lhs.dims[lhs_labels.index(digit)],
                              sizes[j], strides[j], pads[j], lhs_dil[j], rhs_dil[j])
    return 2.0 * non_spatial_out * macs_per_output * pairs


def _group_size(attributes: str, devices: int) -> int:
    """Devices in one replica group: `{{0,1,2,3}}`, `[2,4]<=[8]` or `mesh[...] {'axis'}`."""
    listed = re.search(r"replica_groups=\{\{([0-9,]*)\}", attributes)
    if listed:
        return len(listed.group(1).split(","))
    iota = re.search(r"replica_groups=\[([0-9,]+)\]<=", attributes)
    if iota:
        return int(iota.group(1).split(",")[-1])
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes)
    if mesh:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2)))
    pairs = re.search(r"source_target_pairs=", attributes)
    return 2 if pairs else devices


def _collective_bytes(ins: Instruction, shapes: dict[str, Array], devices: int) -> float:
    """Bytes one device sends, as ring algorithms move them."""
    kind = ins.opcode.removesuffix("-start")
    group = _group_size(ins.attributes, devices)
    if group <= 1:
        return 0.0
    operand = sum(shapes[o].bytes for o in ins.operands if o in shapes)
    fraction = (group - 1) / group
    if kind == "all-gather":
        return fraction * ins.shape[-1].bytes  # the gathered result (last of a -start's tuple)
    if kind == "reduce-scatter":
        return fraction * operand
    if kind == "all-reduce":
        return 2 * fraction * operand
    if kind == "all-to-all":
        return fraction * operand
    return operand  # collective-permute: each device sends its buffer once


def _off_chip(arrays: list[Array]) -> float:
    return sum(a.bytes for a in arrays if not a.on_chip)


def _kernel_traffic(ins: Instruction, shapes: dict[str, Array],
                    computations: dict[str, list[Instruction]]) -> float:
    """HBM bytes one kernel reads and writes. A slice of a buffer reads only the slice, and an
    update of a slice in place (how a scan reads and writes its stacked arrays) writes only
    the update: counting whole buffers would charge a layer loop for every layer each step."""
    operands = [shapes.get(o) for o in ins.operands]
    if ins.opcode == "dynamic-slice":
        return 2 * _off_chip(ins.shape)
    if ins.opcode == "dynamic-update-slice":
        return 2 * _off_chip([operands[1]] if operands[1:] and operands[1] else [])
    body = computations.get(dict(CALLEES.findall(ins.attributes)).get("calls", ""), [])
    if ins.opcode != "fusion" or not body:
        return _off_chip(ins.shape + [a for a in operands if a])
    by_name = {inner.name: inner for inner in body}
    users: dict[str, list[Instruction]] = defaultdict(list)
    for inner in body:
        for operand in inner.operands:
            users[operand].append(inner)
    root = body[-1]
    outputs = [by_name.get(o) for o in root.operands] if root.opcode == "tuple" else [root]
    in_place = {out.operands[0] for out in outputs if out and out.opcode == "dynamic-update-slice"}
    read = 0.0
    for inner in body:
        if inner.opcode != "parameter" or not re.fullmatch(r"\d+", inner.arguments.strip()):
            continue
        index = int(inner.arguments)
        array = operands[index] if index < len(operands) else None
        sliced = users[inner.name]
        if inner.name in in_place or array is None:
            continue
        if sliced and all(u.opcode == "dynamic-slice" and u.operands[0] == inner.name
                          for u in sliced):
            read += _off_chip([a for u in sliced for a in u.shape]) if not array.on_chip else 0
        elif not array.on_chip:
            read += array.bytes
    written = 0.0
    for out, array in zip(outputs, ins.shape if len(outputs) > 1 else ins.shape[:1]):
        if out is not None and out.opcode == "dynamic-update-slice":
            update = by_name.get(out.operands[1]) if len(out.operands) > 1 else None
            written += _off_chip(update.shape) if update and not array.on_chip else 0
        elif not array.on_chip:
            written += array.bytes
    return read + written


def step_costs(text: str, devices: int) -> StepCosts:
    """The per-device costs of one run of the module's entry computation."""
    computations, entry = parse_module(text)
    counts, fused, unknown = _run_counts(computations, entry)
    shapes: dict[str, Array] = {}
    for instructions in computations.values():
        for ins in instructions:
            if len(ins.shape) == 1:
                shapes[ins.name] = ins.shape[0]
    flops = hbm = 0.0
    collective: dict[str, float] = defaultdict(float)
    custom = []
    for name, instructions in computations.items():
        runs = counts.get(name, 0.0)
        if not runs:
            continue
        for ins in instructions:
            if ins.opcode == "dot":
                flops += runs * _dot_flops(ins, shapes)
            elif ins.opcode == "convolution":
                flops += runs * _convolution_flops(ins, shapes)
            elif ins.opcode.removesuffix("-start") in COLLECTIVES:
                collective[ins.opcode.removesuffix("-start")] += runs * _collective_bytes(
                    ins, shapes, devices)
                continue
            elif ins.opcode == "custom-call" and "tpu_custom_call" in ins.attributes:
                custom.append(CustomCall(ins.name, tuple(
                    shapes[o] for o in ins.operands if o in shapes), runs))
            if name not in fused and ins.opcode not in BOOKKEEPING:
                hbm += runs * _kernel_traffic(ins, shapes, computations)
    return StepCosts(flops, hbm, dict(collective), tuple(custom), unknown)
