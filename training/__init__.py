"""Training: PyTorch recipes, ONNX export and verification (`python -m training`).

The same bytes on every x86-64 CPU. torch, MKL, oneDNN and numpy (its OpenBLAS and its SIMD loops) each
choose their code by the CPU they run on (AVX-512 here, AVX2 there), and each choice rounds differently:
LeNet trained on an AMD EPYC and on an Intel Xeon came out with other weights. So before torch or numpy is
first imported, this package pins each library to the code every x86-64 CPU runs, overriding whatever the
environment asked for; the training code then keeps oneDNN and NNPACK out of the way
(`common.seed_everything`). What is left is scalar code compiled once into the wheel, MKL in its
conditional-numerical-reproducibility mode, OpenBLAS's SSE kernels and numpy's baseline loops.
"""

from __future__ import annotations

import os

PINNED_ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "default",  # torch's own kernels: the portable build, not its AVX2/AVX-512 builds
    "MKL_CBWR": "COMPATIBLE",  # MKL (GEMM under Linear and Conv2d): the same code path on Intel and AMD
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",  # and no wider, should CBWR be ignored
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN is switched off for training; this holds if anything reaches it
    "OMP_NUM_THREADS": "1",  # one thread: the order of every reduction is fixed
    "MKL_NUM_THREADS": "1",
}
os.environ.update(PINNED_ENVIRONMENT)

NUMPY_PINS = {
    # numpy's own BLAS (OpenBLAS: the matrix products of the data's augmentation and of preprocessing) picks its
    # kernels by the CPU too (Haswell here, SkylakeX there): its SSE kernels everywhere, on one thread.
    "OPENBLAS_CORETYPE": "Prescott",
    "OPENBLAS_NUM_THREADS": "1",
    # and numpy's ufuncs their SIMD loops: the baseline (x86-64-v2) loops everywhere, never AVX2 or AVX-512 ones
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
}


def _import_numpy_pinned() -> None:
    """numpy reads NUMPY_PINS once, as it is first imported: imported here under them, then they are taken out of
    the environment again, so that what this process starts (a test's server) runs numpy as the machine would; a
    server whose softmax took other loops than its client's would give other last bits."""
    given = {name: os.environ.get(name) for name in NUMPY_PINS}
    os.environ.update(NUMPY_PINS)
    try:
        import numpy  # noqa: F401
    finally:
        for name, value in given.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_import_numpy_pinned()
