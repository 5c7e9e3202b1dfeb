// Bidirectional WKV forward, float32 accumulation, O(T) per (batch, channel).
//
//   y_t = [P_t + exp(u + k_t) v_t + S_t] / [P'_t + exp(u + k_t) + S'_t]
//   P_t = sum_{i<t} exp(-(t-i-1) w + k_i) (v_i, 1)     prefix:  P_{t+1} = e^{-w} P_t + e^{k_t} (v_t, 1)
//   S_t = sum_{i>t} exp(-(i-t-1) w + k_i) (v_i, 1)     suffix:  S_{t-1} = e^{-w} S_t + e^{k_t} (v_t, 1)
//
// A sum is kept as exp(p) * (num, den) with p the largest logit in it, so nothing overflows whatever w T is.
// One thread per (b, chunk, c), c fastest so that a warp reads consecutive channels of one token (coalesced):
//   1. chunk_summary: each chunk's own prefix and suffix sums, from an empty state;
//   2. chunk_scan:    one thread per (b, c, direction) runs the recurrence over the chunk sums, giving the state
//                     entering each chunk from the left (prefix) and from the right (suffix);
//   3. chunk_output:  a backward sweep stores each token's suffix as (num / den, p + log den) in two float
//                     scratch arrays, then a forward sweep carries the prefix and writes y.
// Chunks exist for parallelism only: with one chunk this is the plain two-pass recurrence per (b, c).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // at::cuda::getCurrentCUDAStream is this function
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kThreads = 256;
// Log-scale of an empty sum: exp(kEmpty - x) is 0 for any finite x, with no inf - inf.
constexpr float kEmpty = -1e30f;
// Aim for this many (b, chunk, c) threads so an H100/H200 is full even for one image with few channels.
constexpr int64_t kTargetThreads = int64_t(1) << 17;

struct Sum {
  float num, den, p;  // the sum is exp(p) * (num, den)
};

__device__ __forceinline__ Sum empty_sum() { return {0.f, 0.f, kEmpty}; }

// s <- exp(shift) * s + exp(logit) * (val, 1)
__device__ __forceinline__ void push(Sum& s, float shift, float logit, float val) {
  const float old = s.p + shift;
  const float p = fmaxf(old, logit);
  const float a = __expf(old - p);
  const float b = __expf(logit - p);
  s.num = fmaf(s.num, a, val * b);
  s.den = fmaf(s.den, a, b);
  s.p = p;
}

// s <- exp(shift) * s + t
__device__ __forceinline__ void merge(Sum& s, float shift, const Sum& t) {
  const float old = s.p + shift;
  const float p = fmaxf(old, t.p);
  const float a = __expf(old - p);
  const float b = __expf(t.p - p);
  s.num = fmaf(s.num, a, t.num * b);
  s.den = fmaf(s.den, a, t.den * b);
  s.p = p;
}

// Sums of one direction for all (b, chunk, c), stored as three planes of n = B * nchunks * C floats.
__device__ __forceinline__ Sum load_sum(const float* __restrict__ s, int64_t n, int64_t i) {
  return {s[i], s[n + i], s[2 * n + i]};
}

__device__ __forceinline__ void store_sum(float* __restrict__ s, int64_t n, int64_t i, const Sum& x) {
  s[i] = x.num;
  s[n + i] = x.den;
  s[2 * n + i] = x.p;
}

struct Layout {
  int64_t B, T, C, L, nchunks;
};

__device__ __forceinline__ int64_t chunk_end(const Layout& g, int64_t j) {
  const int64_t e = (j + 1) * g.L;
  return e < g.T ? e : g.T;
}

// 1. The chunk's prefix sum as seen by the token after it, and its suffix sum as seen by the token before it.
template <typename scalar_t>
__global__ void chunk_summary_kernel(Layout g, const float* __restrict__ w, const scalar_t* __restrict__ k,
                                     const scalar_t* __restrict__ v, float* __restrict__ fwd,
                                     float* __restrict__ bwd) {
  const int64_t n = g.B * g.nchunks * g.C;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int64_t c = idx % g.C;
  const int64_t j = (idx / g.C) % g.nchunks;
  const int64_t b = idx / (g.C * g.nchunks);
  const int64_t t0 = j * g.L;
  const int64_t t1 = chunk_end(g, j);
  const float decay = -w[c];
  const scalar_t* kb = k + b * g.T * g.C + c;
  const scalar_t* vb = v + b * g.T * g.C + c;

  Sum f = empty_sum();
  for (int64_t t = t0; t < t1; ++t) push(f, decay, static_cast<float>(kb[t * g.C]), static_cast<float>(vb[t * g.C]));
  Sum r = empty_sum();
  for (int64_t t = t1 - 1; t >= t0; --t) {
    push(r, decay, static_cast<float>(kb[t * g.C]), static_cast<float>(vb[t * g.C]));
  }
  store_sum(fwd, n, idx, f);
  store_sum(bwd, n, idx, r);
}

// 2. Threads [0, B*C) scan the prefix left to right, [B*C, 2*B*C) the suffix right to left. in_* gets, for every
// chunk, the sum entering it: prefix at its first token, suffix at its last token (exclusive of the chunk).
__global__ void chunk_scan_kernel(Layout g, const float* __restrict__ w, const float* __restrict__ sum_fwd,
                                  const float* __restrict__ sum_bwd, float* __restrict__ in_fwd,
                                  float* __restrict__ in_bwd) {
  const int64_t bc = g.B * g.C;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= 2 * bc) return;
  const bool backward = idx >= bc;
  const int64_t c = idx % g.C;
  const int64_t b = (idx % bc) / g.C;
  const int64_t n = g.B * g.nchunks * g.C;
  const float* __restrict__ sums = backward ? sum_bwd : sum_fwd;
  float* __restrict__ in = backward ? in_bwd : in_fwd;
  const float decay = -w[c];

  Sum carry = empty_sum();
  for (int64_t step = 0; step < g.nchunks; ++step) {
    const int64_t j = backward ? g.nchunks - 1 - step : step;
    const int64_t i = (b * g.nchunks + j) * g.C + c;
    const Sum own = load_sum(sums, n, i);
    store_sum(in, n, i, carry);
    const int64_t len = chunk_end(g, j) - j * g.L;
    merge(carry, decay * static_cast<float>(len), own);  // moves the anchor across the chunk's len tokens
  }
}

// 3. y for every token of the chunk. `ratio` may be y itself (float32 output): each element is read before it is
// written, by the same thread, so these three pointers are deliberately not __restrict__.
template <typename scalar_t>
__global__ void chunk_output_kernel(Layout g, const float* __restrict__ w, const float* __restrict__ u,
                                    const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                                    const float* __restrict__ in_fwd, const float* __restrict__ in_bwd,
                                    float* ratio, float* log_den, scalar_t* y) {
  const int64_t n = g.B * g.nchunks * g.C;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= n) return;
  const int64_t c = idx % g.C;
  const int64_t j = (idx / g.C) % g.nchunks;
  const int64_t b = idx / (g.C * g.nchunks);
  const int64_t t0 = j * g.L;
  const int64_t t1 = chunk_end(g, j);
  const float decay = -w[c];
  const float bonus = u[c];
  const int64_t base = b * g.T * g.C + c;

  // Suffix of every token, normalised to (weighted mean of v, log of the total weight).
  Sum s = load_sum(in_bwd, n, idx);
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t o = base + t * g.C;
    const bool any = s.den > 0.f;  // a non-empty sum has den >= 1 (its largest term is exp(0))
    ratio[o] = any ? s.num / s.den : 0.f;
    log_den[o] = any ? s.p + __logf(s.den) : kEmpty;
    push(s, decay, static_cast<float>(k[o]), static_cast<float>(v[o]));
  }

  Sum p = load_sum(in_fwd, n, idx);
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t o = base + t * g.C;
    const float kt = static_cast<float>(k[o]);
    const float vt = static_cast<float>(v[o]);
    const float here = bonus + kt;
    const float suffix = log_den[o];
    const float top = fmaxf(fmaxf(p.p, suffix), here);  // finite: `here` is
    const float ep = __expf(p.p - top);
    const float es = __expf(suffix - top);
    const float eh = __expf(here - top);
    const float num = p.num * ep + ratio[o] * es + vt * eh;
    const float den = p.den * ep + es + eh;
    y[o] = static_cast<scalar_t>(num / den);
    push(p, decay, kt, vt);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

unsigned int blocks_for(int64_t n) { return static_cast<unsigned int>(ceil_div(n, kThreads)); }

// Chunk length: enough chunks to fill the GPU, but at most ~sqrt(T) of them so the sequential chunk scan stays
// short, and at least 32 tokens so the per-chunk overhead stays small.
int64_t chunk_length(int64_t B, int64_t T, int64_t C) {
  const int64_t want_chunks = std::max<int64_t>(1, ceil_div(kTargetThreads, B * C));
  int64_t L = ceil_div(T, want_chunks);
  L = std::max<int64_t>(L, static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(T)))));
  L = std::max<int64_t>(L, 32);
  return std::min<int64_t>(L, T);
}

}  // namespace

at::Tensor bi_wkv_forward_cuda(const at::Tensor& w, const at::Tensor& u, const at::Tensor& k,
                                  const at::Tensor& v) {
  const c10::cuda::CUDAGuard device_guard(k.device());
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  auto y = at::empty_like(k);
  if (B == 0 || T == 0 || C == 0) return y;

  const int64_t L = chunk_length(B, T, C);
  const Layout g{B, T, C, L, ceil_div(T, L)};
  const int64_t n = B * g.nchunks * C;
  const auto fopts = k.options().dtype(at::kFloat);
  // [summary fwd | summary bwd | entering fwd | entering bwd], three planes of n floats each
  auto chunks = at::empty({4, 3, n}, fopts);
  float* sum_fwd = chunks[0].data_ptr<float>();
  float* sum_bwd = chunks[1].data_ptr<float>();
  float* in_fwd = chunks[2].data_ptr<float>();
  float* in_bwd = chunks[3].data_ptr<float>();
  const bool out_float = k.scalar_type() == at::kFloat;
  auto scratch = at::empty({out_float ? 1 : 2, B, T, C}, fopts);
  float* log_den = scratch[0].data_ptr<float>();
  float* ratio = out_float ? y.data_ptr<float>() : scratch[1].data_ptr<float>();

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const float* wp = w.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, k.scalar_type(), "bi_wkv_forward",
                                  [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    chunk_summary_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(g, wp, kp, vp, sum_fwd, sum_bwd);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_scan_kernel<<<blocks_for(2 * B * C), kThreads, 0, stream>>>(g, wp, sum_fwd, sum_bwd, in_fwd, in_bwd);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chunk_output_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(g, wp, up, kp, vp, in_fwd, in_bwd, ratio,
                                                                           log_den, y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}
