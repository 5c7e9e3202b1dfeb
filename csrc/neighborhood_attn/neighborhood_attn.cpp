// Bindings and argument checks for the 2-D neighbourhood attention kernels (NATTEN 0.17 semantics).
// Layout: q, k, v (B, heads, H, W, D) contiguous; attention weights (B, heads, H, W, kh*kw); rpb (heads, 2kh-1, 2kw-1).
#include <torch/extension.h>

#include <optional>

at::Tensor na2d_qk_cuda(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& rpb, int kh,
                        int kw, int dh, int dw);
at::Tensor na2d_av_cuda(const at::Tensor& attn, const at::Tensor& v, int kh, int kw, int dh, int dw);
at::Tensor na2d_fused_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& rpb, double scale, int kh, int kw, int dh, int dw);

namespace {

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == 5, name, " must be 5-D (B, heads, H, W, D), got ", t.dim(), "-D");
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, name,
              " must be float32, float16, bfloat16 or float64, got ", st);
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b, " must be on the same device");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name_a, " and ", name_b, " must have the same dtype");
}

void check_window(const at::Tensor& t, int kh, int kw, int dh, int dw) {
  TORCH_CHECK(kh > 1 && kw > 1 && kh % 2 == 1 && kw % 2 == 1, "kernel sizes must be odd and > 1, got ", kh, "x", kw);
  TORCH_CHECK(dh >= 1 && dw >= 1, "dilations must be >= 1, got ", dh, "x", dw);
  TORCH_CHECK(t.size(2) >= static_cast<int64_t>(kh) * dh, "H=", t.size(2), " is smaller than kernel x dilation = ",
              kh, "x", dh);
  TORCH_CHECK(t.size(3) >= static_cast<int64_t>(kw) * dw, "W=", t.size(3), " is smaller than kernel x dilation = ",
              kw, "x", dw);
}

void check_rpb(const std::optional<at::Tensor>& rpb, const at::Tensor& q, int kh, int kw) {
  if (!rpb.has_value()) return;
  const at::Tensor& r = *rpb;
  check_same(q, r, "query", "rpb");
  TORCH_CHECK(r.is_contiguous(), "rpb must be contiguous");
  TORCH_CHECK(r.dim() == 3 && r.size(0) == q.size(1) && r.size(1) == 2 * kh - 1 && r.size(2) == 2 * kw - 1,
              "rpb must have shape (heads, 2*kh-1, 2*kw-1) = (", q.size(1), ", ", 2 * kh - 1, ", ", 2 * kw - 1,
              "), got ", r.sizes());
}

at::Tensor qk(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& rpb, int kh, int kw, int dh,
              int dw) {
  check_input(q, "query");
  check_input(k, "key");
  check_same(q, k, "query", "key");
  TORCH_CHECK(q.sizes() == k.sizes(), "query and key shapes differ: ", q.sizes(), " vs ", k.sizes());
  check_window(q, kh, kw, dh, dw);
  check_rpb(rpb, q, kh, kw);
  return na2d_qk_cuda(q, k, rpb, kh, kw, dh, dw);
}

at::Tensor av(const at::Tensor& attn, const at::Tensor& v, int kh, int kw, int dh, int dw) {
  check_input(attn, "attn");
  check_input(v, "value");
  check_same(attn, v, "attn", "value");
  check_window(v, kh, kw, dh, dw);
  TORCH_CHECK(attn.size(0) == v.size(0) && attn.size(1) == v.size(1) && attn.size(2) == v.size(2) &&
                  attn.size(3) == v.size(3) && attn.size(4) == static_cast<int64_t>(kh) * kw,
              "attn must be (B, heads, H, W, kh*kw) matching value ", v.sizes(), ", got ", attn.sizes());
  return na2d_av_cuda(attn, v, kh, kw, dh, dw);
}

at::Tensor fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::optional<at::Tensor>& rpb,
                 double scale, int kh, int kw, int dh, int dw) {
  check_input(q, "query");
  check_input(k, "key");
  check_input(v, "value");
  check_same(q, k, "query", "key");
  check_same(q, v, "query", "value");
  TORCH_CHECK(q.sizes() == k.sizes() && q.sizes() == v.sizes(), "query, key and value shapes differ: ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.size(4) <= 256, "the fused kernel takes head_dim <= 256, got ", q.size(4));
  check_window(q, kh, kw, dh, dw);
  check_rpb(rpb, q, kh, kw);
  return na2d_fused_cuda(q, k, v, rpb, scale, kh, kw, dh, dw);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qk", &qk, "neighbourhood attention logits q.k (+ rpb)", py::arg("query"), py::arg("key"), py::arg("rpb"),
        py::arg("kh"), py::arg("kw"), py::arg("dh"), py::arg("dw"));
  m.def("av", &av, "neighbourhood attention weights x values", py::arg("attn"), py::arg("value"), py::arg("kh"),
        py::arg("kw"), py::arg("dh"), py::arg("dw"));
  m.def("fused", &fused, "softmax(q.k * scale + rpb) x v over each neighbourhood", py::arg("query"), py::arg("key"),
        py::arg("value"), py::arg("rpb"), py::arg("scale"), py::arg("kh"), py::arg("kw"), py::arg("dh"),
        py::arg("dw"));
}
