"""Builds the optional C kernel (core/kernels/cpu_kernels.c); everything else is declared in pyproject.toml.

optional=True: without a C compiler the install still succeeds and the CPU backend keeps oneDNN.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    compile_args, link_args = ["/O2", "/openmp"], []
elif sys.platform == "darwin":
    compile_args, link_args = ["-O3"], []  # Apple's clang has no OpenMP: the kernel runs on one thread
else:
    compile_args, link_args = ["-O3", "-fopenmp"], ["-fopenmp"]

libraries = [] if sys.platform == "win32" else ["m"]  # expf, sqrtf

setup(ext_modules=[Extension("gptui.core.kernels._cpu_kernels", ["core/kernels/cpu_kernels.c"],
                             extra_compile_args=compile_args,
                             extra_link_args=link_args, libraries=libraries, optional=True)])
