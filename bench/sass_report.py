"""Registers, stack and memory instructions of pe_ext's CUDA kernels, read from a built extension without a GPU.

    python bench/sass_report.py pe_ext/_C*.so [--family sinusoidal] [--cuobjdump PATH]

Per kernel and architecture: REG and STACK (cuobjdump -res-usage), 128-bit and narrower global stores and loads,
the most 128-bit loads issued in a row before a store (the rows a thread has in flight), and float64 instructions
(conversions, multiplies, adds). Counts are static (instructions in the code, not executed ones).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from collections import defaultdict

F64 = re.compile(r"^(F2F\.F64|F2F\.F32\.F64|I2F\.F64|F2I\.F64|DMUL|DFMA|DADD|DSETP)")


def run(cuobjdump: str, flag: str, path: str) -> str:
    return subprocess.run([cuobjdump, flag, path], capture_output=True, text=True, check=True).stdout


def demangle(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short(name: str) -> str:
    """The kernel's name and template arguments, without namespaces, enum casts or parameters."""
    name = re.sub(r"\(anonymous namespace\)::|pe_ext::\w+::(cuda::)?|c10::|^void ", "", name)
    name = re.sub(r"\((\w+)\)(\d+)", r"\1:\2", name)  # (Variant)0: an enum's value
    depth = 0
    for i, ch in enumerate(name):
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == ">" and depth == 0:
            return name[: i + 1]
    return name


def resources(text: str) -> dict[tuple[str, str], tuple[int, int]]:
    usage, arch = {}, None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("arch = "):
            arch = line.split()[-1]
        m = re.match(r"\s*Function (\S+):$", line)
        if m:
            reg = int(re.search(r"REG:(\d+)", lines[i + 1]).group(1))
            stack = int(re.search(r"STACK:(\d+)", lines[i + 1]).group(1))
            usage[(arch, m.group(1))] = (reg, stack)
    return usage


def instructions(text: str) -> dict[tuple[str, str], list[str]]:
    code, arch, fn = defaultdict(list), None, None
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\d+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            fn = m.group(1)
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m and fn is not None:
            code[(arch, fn)].append(m.group(1))
    return code


def stats(ops: list[str]) -> dict[str, int]:
    stg = [op for op in ops if op.startswith("STG")]
    ldg = [op for op in ops if op.startswith("LDG")]
    run_, in_flight = 0, 0
    for op in ops:
        if op.startswith("LDG") and ".128" in op:
            run_ += 1
            in_flight = max(in_flight, run_)
        elif op.startswith("STG"):
            run_ = 0
    return {
        "STG.128": sum(".128" in op for op in stg),
        "STG<128": sum(".128" not in op for op in stg),
        "LDG.128": sum(".128" in op for op in ldg),
        "LDG<128": sum(".128" not in op for op in ldg),
        "LDG.128 before a STG": in_flight,
        "FP64": sum(bool(F64.match(op)) for op in ops),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("library")
    parser.add_argument("--family", default="sinusoidal")
    parser.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    args = parser.parse_args()
    usage = resources(run(args.cuobjdump, "-res-usage", args.library))
    code = instructions(run(args.cuobjdump, "-sass", args.library))
    names = demangle(sorted({fn for _, fn in code}))
    columns = ["arch", "REG", "STACK", "STG.128", "STG<128", "LDG.128", "LDG<128", "LDG.128 before a STG", "FP64"]
    print("| kernel | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for (arch, fn), ops in sorted(code.items(), key=lambda item: (short(names[item[0][1]]), item[0][0])):
        if f"::{args.family}::" not in names[fn]:
            continue
        reg, stack = usage.get((arch, fn), (-1, -1))
        row = [arch, reg, stack, *stats(ops).values()]
        print(f"| {short(names[fn])} | " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
