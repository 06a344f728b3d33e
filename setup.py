"""Build mom_ops._C against the installed torch: `pip install --no-build-isolation .` (or `-e .`).

The source list is csrc/**/*.cpp (always) and csrc/**/*.cu (CUDA builds); CMakeLists.txt globs the same
patterns, so there is one list. Knobs (environment variables):
  MOM_OPS_CUDA_ARCHS   ';'-separated archs for nvcc, default "9.0a" (the only one the wgmma / TMA kernels compile
                       for; other GPUs run the ops' Triton fallbacks, mom_ops/_other_gpus.py)
  MOM_OPS_SKIP_CUDA    1 = CPU-only build even when torch and nvcc support CUDA
  MOM_OPS_DEBUG        1 = -O0 -g host code, -G device code
  MAX_JOBS             parallel compile jobs (read by torch's ninja build)
  CUTLASS_PATH         CUTLASS checkout (else the nvidia-cutlass wheel's headers), read only where a .cu includes
                       cute/ or cutlass/: no present source does (the kernels use csrc/common's PTX wrappers)
"""

import glob
import os
import re
import shutil
import sys

# torch reads CUDA_HOME when cpp_extension is imported; the nvcc on PATH may be a wrapper, so prefer the toolkit.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CSRC, "**", pattern), recursive=True))


def needs_cutlass(path: str) -> bool:
    with open(os.path.join(ROOT, path)) as f:
        return re.search(r"#include\s*[<\"](cute|cutlass)/", f.read()) is not None


def cutlass_include() -> str | None:
    if os.environ.get("CUTLASS_PATH"):
        return os.path.join(os.environ["CUTLASS_PATH"], "include")
    try:
        import cutlass_library

        return os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
    except ImportError:
        return None


def gencode_flags(archs: str) -> list[str]:
    """'9.0a;8.0' -> nvcc -gencode flags (giving them also stops torch from adding its own arch list)."""
    flags = []
    for arch in filter(None, (a.strip() for a in archs.split(";"))):
        num = arch.replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
    return flags


def cuda_unavailable_reason() -> str | None:
    if env_flag("MOM_OPS_SKIP_CUDA"):
        return "MOM_OPS_SKIP_CUDA=1"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} has no CUDA support"
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return "nvcc not found (set CUDA_HOME)"
    return None


def make_extension():
    debug = env_flag("MOM_OPS_DEBUG")
    cxx_flags = ["-O0", "-g", "-DMOM_OPS_DEBUG"] if debug else ["-O3"]
    cpp_sources = sources("*.cpp")
    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"mom_ops: building the CPU-only extension ({reason}).", file=sys.stderr)
        return CppExtension("mom_ops._C", cpp_sources, include_dirs=[CSRC], extra_compile_args={"cxx": cxx_flags})

    cu_sources = sources("*.cu")
    archs = os.environ.get("MOM_OPS_CUDA_ARCHS", "9.0a")
    include_dirs = [CSRC]
    # ATen/cuda/CUDAContext.h includes CUDA headers that pip's torch ships under nvidia/cu13/include.
    include_dirs += glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu*", "include"))
    cute_sources = [s for s in cu_sources if needs_cutlass(s)]
    if cute_sources:
        inc = cutlass_include()
        if inc is None or not os.path.isdir(inc):
            sys.exit(
                "mom_ops: these sources need CUTLASS/CuTe headers: " + ", ".join(cute_sources) + "\n"
                "  install them with `pip install --no-deps nvidia-cutlass==4.2.0.0` or set CUTLASS_PATH."
            )
        include_dirs.append(inc)
    nvcc_flags = gencode_flags(archs) + [
        "-O3",
        "--expt-relaxed-constexpr",
        "--expt-extended-lambda",
        "-lineinfo",
        "-DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED",
        "-U__CUDA_NO_HALF_OPERATORS__",
        "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    ]
    if debug:
        nvcc_flags += ["-G", "-O0", "-DMOM_OPS_DEBUG"]
    # build_info() reports the archs: "-DMOM_OPS_CUDA_ARCHS=sm_90a,sm_80" is stringised in build_info.cpp.
    arch_names = ",".join("sm_" + a.strip().replace(".", "") for a in archs.split(";") if a.strip())
    defines = ["-DMOM_OPS_WITH_CUDA", f"-DMOM_OPS_CUDA_ARCHS={arch_names}"]
    return CUDAExtension(
        "mom_ops._C",
        cpp_sources + cu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + defines, "nvcc": nvcc_flags + defines},
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
