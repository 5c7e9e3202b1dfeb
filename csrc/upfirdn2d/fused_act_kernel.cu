// Fused bias + leaky ReLU of StyleGAN2: out = leaky_relu(x + bias[channel], negative_slope) * scale, where the
// channel is dim 1 of x. Elementwise, computed in float32, one rounding to the output dtype (also for float64
// inputs, should they be let in: the arithmetic is float32).
//
// Layout: x is viewed as rows of `inner` contiguous values (inner = product of the dims after dim 1), so element e
// has channel (e / inner) % channels. Without a bias the whole tensor is one row of a single (zero) channel.
//
// The kernel walks x as 16-byte vectors (V = 16 / sizeof(T) elements) when x is 16-byte aligned (out always is: a
// fresh allocation), else as single elements (V = 1); the numel % V trailing elements are done one by one. A grid
// sized to the resident blocks strides over the vectors, each thread loading U independent vectors (a block's
// vectors are contiguous, so every load instruction is coalesced) before computing and storing them. The channel is
// not divided out per element: each thread divides once for its first vector and then advances (column in the row,
// channel) by the fixed strides of its walk with adds and compares. A vector lies in one row when column + V <= inner
// (one bias value); otherwise (short rows) its elements step through the rows one by one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // vectors in flight per thread
constexpr int kMaxDevices = 64;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// An element offset d as (d % inner, (d / inner) % channels): what a walk of d elements adds to (column, channel).
struct Step {
  int64_t col;
  int64_t ch;
};

Step make_step(int64_t d, int64_t inner, int64_t channels) { return Step{d % inner, (d / inner) % channels}; }

__device__ __forceinline__ void advance(int64_t& col, int64_t& ch, const Step& s, int64_t inner, int64_t channels) {
  col += s.col;
  ch += s.ch;
  if (col >= inner) {
    col -= inner;
    ++ch;
  }
  if (ch >= channels) ch -= channels;  // ch <= 2 * channels - 1 here
}

__device__ __forceinline__ float act(float x, float b, float negative_slope, float scale) {
  float v = x + b;
  v = v > 0.f ? v : v * negative_slope;
  return v * scale;
}

template <typename T, int V, bool kBias>
__global__ void __launch_bounds__(kThreads)
    fused_bias_leaky_relu_kernel(const T* __restrict__ x, const float* __restrict__ bias, T* __restrict__ out,
                                 int64_t n_vec, int64_t numel, int64_t inner, int64_t channels, Step lane_step,
                                 Step grid_step, float negative_slope, float scale) {
  using VecT = Vec<T, V>;
  const VecT* xv = reinterpret_cast<const VecT*>(x);
  VecT* ov = reinterpret_cast<VecT*>(out);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * (kUnroll * kThreads) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kUnroll * kThreads);

  // (column in the row, channel) of this thread's current first element.
  int64_t col = 0, ch = 0;
  if (kBias && first < n_vec) {
    const int64_t e = first * V;
    const int64_t row = e / inner;
    col = e - row * inner;
    ch = row % channels;
  }

  for (int64_t i0 = first; i0 < n_vec; i0 += stride) {
    VecT in[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * kThreads;
      if (i < n_vec) in[u] = xv[i];
    }
    int64_t c = col, h = ch;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + static_cast<int64_t>(u) * kThreads;
      if (i < n_vec) {
        VecT r;
        if (!kBias) {
#pragma unroll
          for (int e = 0; e < V; ++e) r.v[e] = static_cast<T>(act(static_cast<float>(in[u].v[e]), 0.f,
                                                                  negative_slope, scale));
        } else if (c + V <= inner) {
          const float b = bias[h];
#pragma unroll
          for (int e = 0; e < V; ++e) r.v[e] = static_cast<T>(act(static_cast<float>(in[u].v[e]), b,
                                                                  negative_slope, scale));
        } else {  // the vector crosses rows: step through them
          int64_t cc = c, hh = h;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            r.v[e] = static_cast<T>(act(static_cast<float>(in[u].v[e]), bias[hh], negative_slope, scale));
            if (++cc == inner) {
              cc = 0;
              if (++hh == channels) hh = 0;
            }
          }
        }
        ov[i] = r;
      }
      if (kBias) advance(c, h, lane_step, inner, channels);
    }
    if (kBias) advance(col, ch, grid_step, inner, channels);
  }

  // The numel % V elements after the last whole vector (V > 1 only).
  const int64_t tail = numel - n_vec * V;
  if (blockIdx.x == 0 && static_cast<int64_t>(threadIdx.x) < tail) {
    const int64_t e = n_vec * V + threadIdx.x;
    const float b = kBias ? bias[(e / inner) % channels] : 0.f;
    out[e] = static_cast<T>(act(static_cast<float>(x[e]), b, negative_slope, scale));
  }
}

template <typename T, int V, bool kBias>
void launch(const T* x, const float* bias, T* out, int64_t numel, int64_t inner, int64_t channels,
            float negative_slope, float scale, cudaStream_t stream) {
  const int64_t n_vec = numel / V;
  const auto kernel = fused_bias_leaky_relu_kernel<T, V, kBias>;
  // Resident blocks on the whole device, asked once per device and instantiation (0 = not asked yet).
  static std::atomic<int64_t> cached[kMaxDevices];
  const int dev = c10::cuda::current_device();
  int64_t resident = dev < kMaxDevices ? cached[dev].load(std::memory_order_relaxed) : 0;
  if (resident == 0) {
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    resident = static_cast<int64_t>(std::max(per_sm, 1)) * std::max(sms, 1);
    if (dev < kMaxDevices) cached[dev].store(resident, std::memory_order_relaxed);
  }
  const int64_t needed = (n_vec + kUnroll * kThreads - 1) / (kUnroll * kThreads);
  const int64_t blocks = std::max<int64_t>(1, std::min(needed, resident));
  const Step lane_step = make_step(static_cast<int64_t>(kThreads) * V, inner, channels);
  const Step grid_step = make_step(blocks * kUnroll * kThreads * V, inner, channels);
  kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, bias, out, n_vec, numel, inner, channels,
                                                                 lane_step, grid_step, negative_slope, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_any(const T* x, const float* bias, T* out, int64_t numel, int64_t inner, int64_t channels,
                float negative_slope, float scale, cudaStream_t stream) {
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  const bool vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (bias != nullptr) {
    if (vec) launch<T, kVec, true>(x, bias, out, numel, inner, channels, negative_slope, scale, stream);
    else launch<T, 1, true>(x, bias, out, numel, inner, channels, negative_slope, scale, stream);
  } else {
    if (vec) launch<T, kVec, false>(x, bias, out, numel, inner, channels, negative_slope, scale, stream);
    else launch<T, 1, false>(x, bias, out, numel, inner, channels, negative_slope, scale, stream);
  }
}

}  // namespace

at::Tensor fused_bias_leaky_relu_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                      double negative_slope, double scale) {
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t numel = x.numel();
  if (numel == 0) return out;
  int64_t inner = numel, channels = 1;
  if (bias.has_value()) {
    channels = x.size(1);
    inner = 1;
    for (int64_t d = 2; d < x.dim(); ++d) inner *= x.size(d);
  }
  const float* bias_ptr = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                  "fused_bias_leaky_relu_cuda", [&] {
    launch_any<scalar_t>(x.data_ptr<scalar_t>(), bias_ptr, out.data_ptr<scalar_t>(), numel, inner, channels,
                         static_cast<float>(negative_slope), static_cast<float>(scale), stream);
  });
  return out;
}
