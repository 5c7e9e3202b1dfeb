// Shared declarations between the bindings (selective_scan.cpp) and the kernel (selective_scan_kernel.cu).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

// Where B (or C) element (batch b, group g, state n, step t) lives: b*sb + g*sg + n*sn + t*sl.
// Constant (dim, N): groups = dim, sb = sl = 0. Shared (batch, N, L): groups = 1, sg = 0.
struct BCLayout {
  int64_t groups;
  int64_t sb, sg, sn, sl;
};

struct ScanArgs {
  int64_t batch, dim, len, n, groups;
  BCLayout b, c;
  bool softplus;
};

// out: like u; last: (batch, dim, N) float32 or undefined.
void selective_scan_fwd_cuda(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                             const at::Tensor& C, const std::optional<at::Tensor>& D,
                             const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                             at::Tensor& out, at::Tensor& last, const ScanArgs& a);
