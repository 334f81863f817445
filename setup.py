"""Builds pe_ext._C: the C++ CPU kernels always, the CUDA kernels when nvcc and a CUDA build of torch are present.

Environment switches:
  PE_EXT_FORCE_CPU=1    build the CPU kernels only, even where CUDA could be compiled
  PE_EXT_FORCE_CUDA=1   fail unless the CUDA kernels are compiled (used by CI)
  PE_EXT_SANITIZE=1     build the C++ code with AddressSanitizer and UndefinedBehaviorSanitizer
  PE_EXT_TESTING=1      also build the test-only ops (csrc/*/testing.cpp: the CUDA grid emulators); `make test` and CI
                        set it, a release build leaves it out
  TORCH_CUDA_ARCH_LIST  CUDA targets; default "8.0;9.0+PTX" (A100, H100/H200, PTX for newer chips)
"""

import os
import platform
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def cuda_build_possible() -> bool:
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    force_cpu, force_cuda = env_flag("PE_EXT_FORCE_CPU"), env_flag("PE_EXT_FORCE_CUDA")
    if force_cpu and force_cuda:
        raise RuntimeError("PE_EXT_FORCE_CPU and PE_EXT_FORCE_CUDA are both set; choose one")
    with_cuda = not force_cpu and cuda_build_possible()
    if force_cuda and not with_cuda:
        raise RuntimeError(
            "PE_EXT_FORCE_CUDA=1 but CUDA cannot be compiled here: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r} "
            "(install a CUDA build of torch and set CUDA_HOME, e.g. /usr/local/cuda)"
        )

    testing = env_flag("PE_EXT_TESTING")
    sources = [s for s in sorted(CSRC.rglob("*.cpp")) if testing or s.name != "testing.cpp"]
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the CPU kernels run on one thread.
    # -mprefer-vector-width=256: the AVX-512 clones of the CPU row loops in 256-bit vectors, as GCC tunes its AVX-512
    # targets; 512-bit ones made the float32 add 8-12% slower on the project's AMD EPYC VM (paired timings).
    x86 = platform.machine() in ("x86_64", "AMD64")
    cxx = ["-O3", "-g0", "-fopenmp", *(["-mprefer-vector-width=256"] if x86 else [])]
    ldflags = ["-fopenmp"]
    if env_flag("PE_EXT_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        # PE_EXT_SANITIZE also drops the per-ISA clones of the CPU row loops, so the baseline code path is tested.
        # -fno-wrapv: Python's build flags pass -fwrapv, which defines signed overflow and so hides it from UBSan.
        cxx = ["-O1", "-g", "-fopenmp", "-fno-wrapv", "-DPE_EXT_SANITIZE", *sanitize]
        ldflags += sanitize
    if testing:
        cxx.append("-DPE_EXT_TESTING")
    args = {"cxx": cxx}
    kind = cpp_extension.CppExtension
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        sources += sorted(CSRC.rglob("*.cu"))
        args["cxx"] = [*cxx, "-DPE_EXT_WITH_CUDA"]
        # No --use_fast_math: sin/cos must stay accurate at large angles.
        args["nvcc"] = ["-O3", "-Xcompiler=-g0", "-DPE_EXT_WITH_CUDA", "-lineinfo", "--ptxas-options=-v"]
        kind = cpp_extension.CUDAExtension
    print(f"pe_ext: building {'CPU + CUDA' if with_cuda else 'CPU-only'} kernels", flush=True)
    return kind(
        name="pe_ext._C",
        sources=[str(s.relative_to(ROOT)) for s in sources],
        include_dirs=[str(CSRC)],
        extra_compile_args=args,
        extra_link_args=ldflags,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
