"""Triton kernels of the hnerv_fast fused ops, one module per op family (folder kernels/, imported as
hnerv_triton: setup.py maps the name, scripts/gpu_check.sh links it when nothing is installed).

    hnerv_triton.psnr       per-sample PSNR
    hnerv_triton.ssim       fused SSIM / cs + L1 + L2 statistics and their fused backward
    hnerv_triton.grad_norm  grouped L2 norms over a table of tensor pointers

Each module holds the @triton.jit kernels plus a plain launcher taking and returning tensors.
They are wrapped as torch custom ops (hnerv_fast_triton::*) by hnerv_fast/ops/_triton_ops.py.
Importing these modules needs triton; to run them on CPU tensors, set TRITON_INTERPRET=1 in the
environment before the first import (the interpreter is chosen when the kernels are defined).
"""
