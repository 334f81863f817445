"""How the CPU kernel treats the memory it writes: an output nothing has touched yet is advised to use transparent huge
pages (so that a plain process page-faults a large output in 2 MiB at a time instead of 4 KiB), and memory already
in use (a caller's out= buffer, x written in place) keeps its mapping as it is. Read from /proc/self/smaps: the
VmFlags of the mapping that holds the output ("hg": MADV_HUGEPAGE given)."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.helpers import requires_extension


def thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that contains `address`."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:  # a mapping's first line: "start-end perms ..."
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise LookupError(f"no mapping holds {address:#x}")


pytestmark = [
    requires_extension,
    pytest.mark.skipif(sys.platform != "linux" or thp_mode() not in ("madvise", "always"),
                       reason="needs Linux with transparent huge pages enabled (madvise or always)"),
]

SHAPE = (4, 1024, 4096)  # 64 MiB of float32: glibc maps a block this large afresh for each allocation


def interior(t: torch.Tensor) -> int:
    """An address well inside t's memory (past its first, partial huge page)."""
    return t.data_ptr() + t.numel() * t.element_size() // 2


def test_a_fresh_output_is_advised_to_use_huge_pages():
    x = torch.randn(SHAPE)
    out = torch.ops.pe_ext.add_pe(x)
    assert "hg" in vm_flags(interior(out))
    torch.testing.assert_close(out, torch.ops.pe_ext.add_pe(x.clone()), atol=0, rtol=0)


def test_memory_already_in_use_keeps_its_mapping():
    x = torch.randn(SHAPE)
    out = torch.zeros(SHAPE)  # written, so its pages are present
    torch.ops.pe_ext.add_pe_out(x, None, 0, 1.0, 1, out)
    torch.ops.pe_ext.add_pe_(x)
    assert "hg" not in vm_flags(interior(out))
    assert "hg" not in vm_flags(interior(x))
