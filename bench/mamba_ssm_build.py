"""Build mamba-ssm's `selective_scan_cuda` forward for the running GPU only, so that the tests and bench/ops.py can
compare it with our kernel (the third selective-scan backend) on a machine where mamba-ssm is not installed.

mamba-ssm's own setup.py compiles forward and backward for ~10 GPU architectures (tens of minutes) and downloads
prebuilt wheels first; the GPU machine has no network. This builds its forward sources (csrc/selective_scan/
selective_scan.cpp and selective_scan_fwd_{fp32,fp16,bf16}.cu, unchanged) with flags like its setup.py's, plus a
small file of our own that defines the backward instantiations the bindings reference as "not built" errors.
Nothing of mamba-ssm is committed here: point --src at an unpacked sdist (pip download mamba-ssm --no-deps
--no-binary :all:, or the tarball from PyPI) kept in an ignored folder, e.g. build/mamba_ssm/.

    python bench/mamba_ssm_build.py --src build/mamba_ssm/mamba_ssm-2.3.2.post1 --out /tmp/mamba-build
    PYTHONPATH=.:/tmp/mamba-build python -m pytest -m cuda tests/test_ops_selective_scan.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BWD_STUBS = r"""
// Backward entry points that selective_scan.cpp's bindings name: this forward-only build answers them with an error.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/complex.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>
#include "selective_scan.h"

template <typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd&, cudaStream_t) {
  TORCH_CHECK(false, "this selective_scan_cuda was built forward-only (bench/mamba_ssm_build.py)");
}
template void selective_scan_bwd_cuda<float, float>(SSMParamsBwd&, cudaStream_t);
template void selective_scan_bwd_cuda<float, c10::complex<float>>(SSMParamsBwd&, cudaStream_t);
template void selective_scan_bwd_cuda<c10::Half, float>(SSMParamsBwd&, cudaStream_t);
template void selective_scan_bwd_cuda<c10::Half, c10::complex<float>>(SSMParamsBwd&, cudaStream_t);
template void selective_scan_bwd_cuda<c10::BFloat16, float>(SSMParamsBwd&, cudaStream_t);
template void selective_scan_bwd_cuda<c10::BFloat16, c10::complex<float>>(SSMParamsBwd&, cudaStream_t);
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="unpacked mamba-ssm source tree (has csrc/)")
    ap.add_argument("--out", type=Path, required=True, help="build folder; put it on PYTHONPATH afterwards")
    args = ap.parse_args()

    import torch
    from torch.utils import cpp_extension

    if not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 1
    csrc = (args.src / "csrc" / "selective_scan").resolve()
    if not (csrc / "selective_scan.cpp").is_file():
        print(f"{csrc}/selective_scan.cpp not found", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    stubs = args.out / "selective_scan_bwd_stubs.cu"
    stubs.write_text(BWD_STUBS)
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    sources = [str(csrc / "selective_scan.cpp")]
    sources += [str(csrc / f"selective_scan_fwd_{t}.cu") for t in ("fp32", "fp16", "bf16")]
    sources.append(str(stubs))
    start = time.time()
    cpp_extension.load(
        name="selective_scan_cuda", sources=sources, build_directory=str(args.out), verbose=False,
        extra_include_paths=[str(csrc)], extra_cflags=["-O3"],
        # as mamba-ssm's setup.py builds it (its flags, one architecture)
        extra_cuda_cflags=["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                           "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                           "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                           "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"],
    )
    print(f"built selective_scan_cuda for sm_{major}{minor} in {time.time() - start:.0f} s into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
