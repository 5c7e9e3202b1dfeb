// upfirdn2d: out = downsample(conv(pad(upsample(x)), flip(kernel))), one thread per output pixel.
//
// Coordinates: a tap ky of output row oy reads row r = oy * down_y + ky of the padded signal, which is row
// u = r - pad_y0 of the zero-inserted signal (a negative pad_y0 crops, the same formula). That row holds input row
// u / up_y when u is a multiple of up_y and 0 <= u / up_y < in_h, and zero otherwise. So only every up_y-th tap,
// starting at ky0 = (-(oy * down_y - pad_y0)) mod up_y, can be non-zero: the loops visit just those. Columns alike.
// The filter is applied flipped (true convolution), as BasicSR's upfirdn2d_native does with conv2d(flip(k)).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cstdlib>

namespace {

// A warp along x keeps loads and stores coalesced; 8 rows per block share the taps in shared memory.
constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int64_t kMaxGridYZ = 65535;

__device__ __forceinline__ int floor_mod(int a, int m) {
  const int r = a % m;
  return r < 0 ? r + m : r;
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const float* __restrict__ taps,
                                 scalar_t* __restrict__ out, int64_t planes, int in_h, int in_w, int out_h,
                                 int out_w, int kh, int kw, int up_x, int up_y, int down_x, int down_y, int pad_x0,
                                 int pad_y0) {
  // Flipping both axes of a row-major kh x kw array is reversing it.
  extern __shared__ float flipped[];
  const int n_taps = kh * kw;
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i < n_taps; i += blockDim.x * blockDim.y) {
    flipped[i] = taps[n_taps - 1 - i];
  }
  __syncthreads();

  const int ox = blockIdx.x * blockDim.x + threadIdx.x;
  const int oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= out_w || oy >= out_h) return;

  // Zero-inserted coordinates of tap 0, and the first tap that lands on an input sample.
  const int uy0 = oy * down_y - pad_y0;
  const int ux0 = ox * down_x - pad_x0;
  const int ky0 = floor_mod(-uy0, up_y);
  const int kx0 = floor_mod(-ux0, up_x);
  const int64_t in_plane = static_cast<int64_t>(in_h) * in_w;
  const int64_t out_plane = static_cast<int64_t>(out_h) * out_w;
  const int64_t out_offset = static_cast<int64_t>(oy) * out_w + ox;

  for (int64_t p = blockIdx.z; p < planes; p += gridDim.z) {
    const scalar_t* src = x + p * in_plane;
    float acc = 0.f;
    for (int ky = ky0; ky < kh; ky += up_y) {
      const int iy = (uy0 + ky) / up_y;  // exact: uy0 + ky is a multiple of up_y (also when negative)
      if (iy < 0 || iy >= in_h) continue;
      const scalar_t* row = src + static_cast<int64_t>(iy) * in_w;
      const float* trow = flipped + ky * kw;
      for (int kx = kx0; kx < kw; kx += up_x) {
        const int ix = (ux0 + kx) / up_x;
        if (ix < 0 || ix >= in_w) continue;
        acc += static_cast<float>(row[ix]) * trow[kx];
      }
    }
    out[p * out_plane + out_offset] = static_cast<scalar_t>(acc);
  }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& kernel, int64_t up_x, int64_t up_y,
                          int64_t down_x, int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0,
                          int64_t pad_y1) {
  const int64_t n = x.size(0), c = x.size(1), in_h = x.size(2), in_w = x.size(3);
  const int64_t kh = kernel.size(0), kw = kernel.size(1);
  const int64_t span_h = in_h * up_y + pad_y0 + pad_y1 - kh;
  const int64_t span_w = in_w * up_x + pad_x0 + pad_x1 - kw;
  TORCH_CHECK(span_h >= 0 && span_w >= 0, "upfirdn2d: the padded signal (", in_h * up_y + pad_y0 + pad_y1, "x",
              in_w * up_x + pad_x0 + pad_x1, ") is smaller than the ", kh, "x", kw, " kernel");
  const int64_t out_h = span_h / down_y + 1;
  const int64_t out_w = span_w / down_x + 1;
  // Device-side index math is 32-bit within a plane (planes are addressed with 64-bit offsets).
  const int64_t extent_h = in_h * up_y + std::abs(pad_y0) + std::abs(pad_y1) + out_h * down_y + kh;
  const int64_t extent_w = in_w * up_x + std::abs(pad_x0) + std::abs(pad_x1) + out_w * down_x + kw;
  TORCH_CHECK(extent_h < INT_MAX && extent_w < INT_MAX, "upfirdn2d: sizes too large for 32-bit in-plane indexing");
  TORCH_CHECK((out_h + kBlockY - 1) / kBlockY <= kMaxGridYZ, "upfirdn2d: output height ", out_h, " too large");

  auto out = at::empty({n, c, out_h, out_w}, x.options());
  const int64_t planes = n * c;
  if (planes == 0) return out;

  const dim3 block(kBlockX, kBlockY);
  const dim3 grid(static_cast<unsigned>((out_w + kBlockX - 1) / kBlockX),
                  static_cast<unsigned>((out_h + kBlockY - 1) / kBlockY),
                  static_cast<unsigned>(std::min(planes, kMaxGridYZ)));
  const size_t smem = static_cast<size_t>(kh * kw) * sizeof(float);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_cuda",
                                  [&] {
    upfirdn2d_kernel<scalar_t><<<grid, block, smem, stream>>>(
        x.data_ptr<scalar_t>(), kernel.data_ptr<float>(), out.data_ptr<scalar_t>(), planes,
        static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h), static_cast<int>(out_w),
        static_cast<int>(kh), static_cast<int>(kw), static_cast<int>(up_x), static_cast<int>(up_y),
        static_cast<int>(down_x), static_cast<int>(down_y), static_cast<int>(pad_x0), static_cast<int>(pad_y0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}
