// Python bindings and argument checks for the selective-scan forward kernel (selective_scan_kernel.cu).
// Semantics: state-spaces/mamba selective_scan_fn forward; see archs/ops/selective_scan.py.

#include <torch/extension.h>

#include <optional>
#include <vector>

#include "selective_scan.h"

namespace {

void check_cuda_f32_vec(const std::optional<at::Tensor>& t, const at::Tensor& u, int64_t dim, const char* name) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->is_cuda() && t->device() == u.device(), name, " must be on u's CUDA device");
  TORCH_CHECK(t->scalar_type() == at::kFloat, name, " must be float32");
  TORCH_CHECK(t->dim() == 1 && t->size(0) == dim, name, " must have shape (dim=", dim, ")");
  TORCH_CHECK(t->is_contiguous(), name, " must be contiguous");
}

// B or C: constant (dim, N), shared (batch, N, L) or grouped (batch, G, N, L). Fills the strides used by the kernel.
BCLayout bc_layout(const at::Tensor& m, const at::Tensor& u, int64_t n, const char* name) {
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
  TORCH_CHECK(m.is_cuda() && m.device() == u.device(), name, " must be on u's CUDA device");
  TORCH_CHECK(m.scalar_type() == at::kFloat || m.scalar_type() == u.scalar_type(), name,
              " must be float32 or have u's dtype");
  BCLayout l{};
  if (m.dim() == 2) {
    TORCH_CHECK(m.size(0) == dim && m.size(1) == n, name, " (constant) must be (dim, N)");
    l.groups = dim;
    l.sb = 0;
    l.sg = m.stride(0);
    l.sn = m.stride(1);
    l.sl = 0;
  } else if (m.dim() == 3) {
    TORCH_CHECK(m.size(0) == batch && m.size(1) == n && m.size(2) == len, name, " must be (batch, N, L)");
    l.groups = 1;
    l.sb = m.stride(0);
    l.sg = 0;
    l.sn = m.stride(1);
    l.sl = m.stride(2);
  } else {
    TORCH_CHECK(m.dim() == 4, name, " must be (dim, N), (batch, N, L) or (batch, G, N, L)");
    TORCH_CHECK(m.size(0) == batch && m.size(2) == n && m.size(3) == len, name, " must be (batch, G, N, L)");
    TORCH_CHECK(m.size(1) >= 1 && dim % m.size(1) == 0, name, ": the group count G must divide dim");
    l.groups = m.size(1);
    l.sb = m.stride(0);
    l.sg = m.stride(1);
    l.sn = m.stride(2);
    l.sl = m.stride(3);
  }
  return l;
}

std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D,
                            const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                            bool delta_softplus, bool return_last_state) {
  TORCH_CHECK(u.is_cuda(), "selective_scan: u must be a CUDA tensor");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kHalf || u.scalar_type() == at::kBFloat16,
              "selective_scan: u must be float32, float16 or bfloat16");
  TORCH_CHECK(u.dim() == 3, "selective_scan: u must be (batch, dim, L)");
  TORCH_CHECK(u.is_contiguous() && delta.is_contiguous(), "selective_scan: u and delta must be contiguous");
  TORCH_CHECK(delta.is_cuda() && delta.device() == u.device(), "delta must be on u's CUDA device");
  TORCH_CHECK(delta.sizes() == u.sizes() && delta.scalar_type() == u.scalar_type(),
              "delta must have u's shape and dtype");
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
  TORCH_CHECK(A.is_cuda() && A.device() == u.device() && A.scalar_type() == at::kFloat,
              "A must be a float32 tensor on u's device (real A only)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim && A.size(1) >= 1 && A.is_contiguous(),
              "A must be a contiguous (dim, N) tensor");
  const int64_t n = A.size(1);
  check_cuda_f32_vec(D, u, dim, "D");
  check_cuda_f32_vec(delta_bias, u, dim, "delta_bias");
  if (z.has_value()) {
    TORCH_CHECK(z->is_cuda() && z->device() == u.device(), "z must be on u's CUDA device");
    TORCH_CHECK(z->sizes() == u.sizes() && z->scalar_type() == u.scalar_type() && z->is_contiguous(),
                "z must be contiguous with u's shape and dtype");
  }
  TORCH_CHECK(B.scalar_type() == C.scalar_type(), "B and C must have the same dtype");
  TORCH_CHECK(B.dim() == C.dim(), "B and C must have the same form (constant, shared or grouped)");
  const BCLayout lb = bc_layout(B, u, n, "B");
  const BCLayout lc = bc_layout(C, u, n, "C");
  TORCH_CHECK(lb.groups == lc.groups, "B and C must have the same number of groups");
  TORCH_CHECK(lb.groups <= 65535, "selective_scan: at most 65535 B/C groups (constant B/C: dim <= 65535)");

  at::Tensor out = at::empty_like(u);
  at::Tensor last = return_last_state ? at::empty({batch, dim, n}, u.options().dtype(at::kFloat)) : at::Tensor();
  if (batch == 0 || dim == 0 || len == 0) {
    if (return_last_state) last.zero_();
    return {out, last};
  }
  ScanArgs a{};
  a.batch = batch;
  a.dim = dim;
  a.len = len;
  a.n = n;
  a.groups = lb.groups;
  a.b = lb;
  a.c = lc;
  a.softplus = delta_softplus;
  selective_scan_fwd_cuda(u, delta, A, B, C, D, z, delta_bias, out, last, a);
  return {out, last};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Mamba selective scan, forward only (restore)";
  m.def("fwd", &fwd, "selective scan forward: (out, last_state or undefined)", py::arg("u"), py::arg("delta"),
        py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"),
        py::arg("delta_softplus"), py::arg("return_last_state"));
}
