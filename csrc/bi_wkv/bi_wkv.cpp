// Python bindings of the bidirectional WKV forward (Vision-RWKV / Restore-RWKV); math in bi_wkv_kernel.cu.

#include <torch/extension.h>

at::Tensor bi_wkv_forward_cuda(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k,
                               const at::Tensor& v);

namespace {

torch::Tensor bi_wkv_forward(torch::Tensor w, torch::Tensor u, torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k.is_cuda() && v.is_cuda() && w.is_cuda() && u.is_cuda(), "bi_wkv: w, u, k and v must be CUDA tensors");
  TORCH_CHECK(w.device() == k.device() && u.device() == k.device() && v.device() == k.device(),
              "bi_wkv: w, u, k and v must be on the same device");
  TORCH_CHECK(k.dim() == 3, "bi_wkv: k must be (B, T, C), got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "bi_wkv: v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  const int64_t C = k.size(2);
  TORCH_CHECK(w.dim() == 1 && w.size(0) == C, "bi_wkv: w must be (", C, "), got ", w.sizes());
  TORCH_CHECK(u.dim() == 1 && u.size(0) == C, "bi_wkv: u must be (", C, "), got ", u.sizes());
  TORCH_CHECK(w.scalar_type() == torch::kFloat && u.scalar_type() == torch::kFloat,
              "bi_wkv: w and u must be float32");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "bi_wkv: k and v must have the same dtype");
  const auto dt = k.scalar_type();
  TORCH_CHECK(dt == torch::kFloat || dt == torch::kHalf || dt == torch::kBFloat16,
              "bi_wkv: k and v must be float32, float16 or bfloat16, got ", dt);
  return bi_wkv_forward_cuda(w.contiguous(), u.contiguous(), k.contiguous(), v.contiguous());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &bi_wkv_forward,
        "Bi-WKV forward: y (B, T, C) from w, u (C,) float32 and k, v (B, T, C) (CUDA, inference only)",
        py::arg("w"), py::arg("u"), py::arg("k"), py::arg("v"));
}
