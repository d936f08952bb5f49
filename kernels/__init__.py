"""Triton kernels of the hnerv_fast fused ops, one module per op family.

    kernels.psnr       per-sample PSNR
    kernels.ssim       fused SSIM / cs + L1 + L2 statistics and their fused backward
    kernels.grad_norm  grouped L2 norms over a table of tensor pointers

Each module holds the @triton.jit kernels plus a plain launcher taking and returning tensors.
They are wrapped as torch custom ops (hnerv_fast_triton::*) by hnerv_fast/ops/_triton_ops.py.
Importing these modules needs triton; to run them on CPU tensors, set TRITON_INTERPRET=1 in the
environment before the first import (the interpreter is chosen when the kernels are defined).
"""
