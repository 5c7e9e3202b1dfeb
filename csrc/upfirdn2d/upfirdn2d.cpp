// Bindings of the StyleGAN2 resampling ops: upfirdn2d (upsample, pad, FIR filter, downsample) and the fused
// bias + leaky ReLU. Inference only: the Python front (archs/ops/upfirdn2d.py) sends autograd to its reference.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x, int64_t up_y,
                             int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                             int64_t pad_y1);
torch::Tensor fused_bias_leaky_relu_cuda(const torch::Tensor& x, const c10::optional<torch::Tensor>& bias,
                                         double negative_slope, double scale);

namespace {

void check_half_or_float(const torch::Tensor& t, const char* name) {
  const auto dt = t.scalar_type();
  TORCH_CHECK(dt == torch::kFloat || dt == torch::kHalf || dt == torch::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", dt);
}

torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& kernel, int64_t up_x, int64_t up_y,
                        int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                        int64_t pad_y1) {
  TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
  TORCH_CHECK(kernel.is_cuda() && kernel.get_device() == x.get_device(),
              "upfirdn2d: kernel must be on the same CUDA device as x");
  TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must be (N, C, H, W), got ", x.dim(), " dimensions");
  TORCH_CHECK(kernel.dim() == 2, "upfirdn2d: kernel must be 2-D (kh, kw), got ", kernel.dim(), " dimensions");
  check_half_or_float(x, "upfirdn2d: x");
  TORCH_CHECK(kernel.scalar_type() == torch::kFloat, "upfirdn2d: kernel must be float32");
  TORCH_CHECK(x.is_contiguous() && kernel.is_contiguous(), "upfirdn2d: x and kernel must be contiguous");
  TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1, "upfirdn2d: up and down factors must be >= 1");
  // The taps live in shared memory: 48 KiB holds 12288 floats; StyleGAN2 uses 4x4.
  TORCH_CHECK(kernel.numel() >= 1 && kernel.numel() <= 4096, "upfirdn2d: kernel must have 1..4096 taps, got ",
              kernel.numel());
  const c10::cuda::CUDAGuard guard(x.device());
  return upfirdn2d_cuda(x, kernel, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1);
}

torch::Tensor fused_bias_leaky_relu(const torch::Tensor& x, const c10::optional<torch::Tensor>& bias,
                                    double negative_slope, double scale) {
  TORCH_CHECK(x.is_cuda(), "fused_bias_leaky_relu: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() >= 1, "fused_bias_leaky_relu: x must have at least one dimension");
  check_half_or_float(x, "fused_bias_leaky_relu: x");
  TORCH_CHECK(x.is_contiguous(), "fused_bias_leaky_relu: x must be contiguous");
  if (bias.has_value()) {
    const auto& b = *bias;
    TORCH_CHECK(b.is_cuda() && b.get_device() == x.get_device(),
                "fused_bias_leaky_relu: bias must be on the same CUDA device as x");
    TORCH_CHECK(b.scalar_type() == torch::kFloat, "fused_bias_leaky_relu: bias must be float32");
    TORCH_CHECK(b.dim() == 1 && b.is_contiguous(), "fused_bias_leaky_relu: bias must be a contiguous 1-D tensor");
    TORCH_CHECK(x.dim() >= 2 && b.size(0) == x.size(1), "fused_bias_leaky_relu: bias has ", b.size(0),
                " values but x has ", x.dim() >= 2 ? x.size(1) : 0, " channels (dim 1)");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  return fused_bias_leaky_relu_cuda(x, bias, negative_slope, scale);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upfirdn2d", &upfirdn2d, "upsample by zero insertion, pad/crop, FIR filter, downsample (CUDA)",
        py::arg("x"), py::arg("kernel"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
        py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"));
  m.def("fused_bias_leaky_relu", &fused_bias_leaky_relu,
        "leaky_relu(x + bias on dim 1, negative_slope) * scale (CUDA)", py::arg("x"), py::arg("bias"),
        py::arg("negative_slope"), py::arg("scale"));
}
