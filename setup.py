"""Builds the fused-op extensions.

`hnerv_fast._C`      C++ CPU kernels + the TORCH_LIBRARY(hnerv_fast) schema registration (always).
`hnerv_fast._C_cuda` CUDA kernels (csrc/cuda/*.cu + *.cpp) when CUDA torch and nvcc are present and
                     either a GPU is visible or FORCE_CUDA=1 (CI compiles them without a GPU so the
                     CUDA sources never rot).
"""
import glob
import os

from setuptools import find_packages, setup


def _extensions():
    from torch.utils import cpp_extension

    cxx_flags = ["-O3", "-std=c++20"]  # torch >= 2.10 headers need C++20
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    exts = []
    if cpu_sources:
        exts.append(
            cpp_extension.CppExtension(
                "hnerv_fast._C",
                cpu_sources,
                extra_compile_args={"cxx": cxx_flags + ["-fopenmp"]},
                extra_link_args=["-fopenmp"],
            )
        )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    want_cuda = os.environ.get("FORCE_CUDA") == "1"
    try:
        import torch

        want_cuda = want_cuda or torch.cuda.is_available()
        cuda_torch = torch.version.cuda is not None
    except Exception:  # torch missing is reported by pip itself
        cuda_torch = False
    if cuda_sources and want_cuda and cuda_torch and cpp_extension.CUDA_HOME:
        exts.append(
            cpp_extension.CUDAExtension(
                "hnerv_fast._C_cuda",
                cuda_sources,
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-std=c++20"]},
            )
        )
    return exts, cpp_extension.BuildExtension.with_options(use_ninja=True)


ext_modules, build_ext = _extensions()
# kernels/ (the Triton kernels) installs and imports as hnerv_triton: `kernels` is another PyPI package.
# tools/ (test and docs helpers) stays out of the install.
setup(
    packages=find_packages(include=["hnerv_fast", "hnerv_fast.*"]) + ["hnerv_triton"],
    package_dir={"hnerv_triton": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
