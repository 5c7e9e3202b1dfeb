// 2-D neighbourhood attention kernels with NATTEN 0.17 semantics (forward only).
//
// Layout: q, k, v (B, heads, H, W, D) contiguous; attention weights (B, heads, H, W, kh*kw), neighbours row-major;
// rpb (heads, 2kh-1, 2kw-1). Window rule per axis (NATTEN get_window_start / get_pb_start): position i lies on the
// dilation sub-grid of residue r = i % d, at ip = i / d, in a sub-grid of lr = ceil((L - r) / d) positions; its window
// starts at s = clamp(ip - k/2, 0, lr - k), keys are (s + n) * d + r and rpb rows s + n - ip + k - 1 (n < k).
// The host checks L >= k * d, so lr >= k and every window is full (no masking).
//
// Kernels (all grid-stride or one-shot launches over int64 indices, accumulation in float32, float64 for double):
//   qk:    one thread per (query, neighbour); consecutive threads write consecutive logits.
//   av:    one thread per (query, channel); consecutive threads read consecutive channels of each value row.
//   fused: a team of T = min(32, pow2 >= D) lanes per query, each lane holding ceil(D / T) channels of q and of the
//          output in registers; per neighbour the lanes' partial dot products are summed with warp shuffles and an
//          online softmax rescales the running output, so the weights never go to memory.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>

namespace {

constexpr int kThreads = 256;

struct Window {
  int start;  // first key index; key n is start + n * dilation
  int bias;   // rpb row/column of key 0; key n uses bias + n
};

__device__ __forceinline__ Window window(int i, int length, int kernel, int dilation) {
  const int r = i % dilation;
  const int ip = i / dilation;
  const int lr = (length - r + dilation - 1) / dilation;
  const int s = min(max(ip - kernel / 2, 0), lr - kernel);
  return {s * dilation + r, s - ip + kernel - 1};
}

__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

unsigned int grid_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{1} << 30)));
}

template <typename scalar_t>
__global__ void qk_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                          const scalar_t* __restrict__ rpb, scalar_t* __restrict__ attn, int64_t total, int heads,
                          int H, int W, int D, int kh, int kw, int dh, int dw) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int kk = kh * kw;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int n = static_cast<int>(idx % kk);
    const int64_t pix = idx / kk;  // ((b * heads + h) * H + i) * W + j
    const int j = static_cast<int>(pix % W);
    const int i = static_cast<int>((pix / W) % H);
    const int64_t bh = pix / (static_cast<int64_t>(H) * W);
    const int a = n / kw, c = n % kw;
    const Window wi = window(i, H, kh, dh), wj = window(j, W, kw, dw);
    const scalar_t* qp = q + pix * D;
    const scalar_t* kp = k + ((bh * H + wi.start + a * dh) * W + wj.start + c * dw) * D;
    acc_t sum = 0;
    for (int d = 0; d < D; ++d) sum += static_cast<acc_t>(qp[d]) * static_cast<acc_t>(kp[d]);
    if (rpb != nullptr) {
      const int h = static_cast<int>(bh % heads);
      sum += static_cast<acc_t>(rpb[(static_cast<int64_t>(h) * (2 * kh - 1) + wi.bias + a) * (2 * kw - 1) + wj.bias + c]);
    }
    attn[idx] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void av_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ v,
                          scalar_t* __restrict__ out, int64_t total, int H, int W, int D, int kh, int kw, int dh,
                          int dw) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int d = static_cast<int>(idx % D);
    const int64_t pix = idx / D;
    const int j = static_cast<int>(pix % W);
    const int i = static_cast<int>((pix / W) % H);
    const int64_t bh = pix / (static_cast<int64_t>(H) * W);
    const Window wi = window(i, H, kh, dh), wj = window(j, W, kw, dw);
    const scalar_t* ap = attn + pix * (kh * kw);
    const scalar_t* vb = v + bh * H * W * D + d;
    acc_t sum = 0;
    for (int a = 0; a < kh; ++a) {
      const int64_t row = static_cast<int64_t>(wi.start + a * dh) * W;
      for (int c = 0; c < kw; ++c) {
        sum += static_cast<acc_t>(ap[a * kw + c]) * static_cast<acc_t>(vb[(row + wj.start + c * dw) * D]);
      }
    }
    out[idx] = static_cast<scalar_t>(sum);
  }
}

// One team of `team` lanes (a power of two <= 32, so teams never straddle a warp) per query; lane l owns channels
// l, l + team, ... (SLOTS of them). Threads past the last query still run the loop on a clamped query so that whole
// warps take part in the shuffles; they write nothing.
template <typename scalar_t, int SLOTS>
__global__ void fused_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                             const scalar_t* __restrict__ v, const scalar_t* __restrict__ rpb,
                             scalar_t* __restrict__ out, int64_t queries, int team, int heads, int H, int W, int D,
                             int kh, int kw, int dh, int dw, double scale) {
  using acc_t = at::acc_type<scalar_t, true>;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x & (team - 1);
  const bool active = tid / team < queries;
  const int64_t pix = active ? tid / team : queries - 1;
  const int j = static_cast<int>(pix % W);
  const int i = static_cast<int>((pix / W) % H);
  const int64_t bh = pix / (static_cast<int64_t>(H) * W);
  const int h = static_cast<int>(bh % heads);
  const Window wi = window(i, H, kh, dh), wj = window(j, W, kw, dw);

  acc_t qv[SLOTS], acc[SLOTS];
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) {
    const int d = lane + s * team;
    qv[s] = d < D ? static_cast<acc_t>(q[pix * D + d]) * static_cast<acc_t>(scale) : acc_t(0);
    acc[s] = 0;
  }
  acc_t m = -INFINITY, l = 0;
  const int64_t base = bh * H * W;
  for (int a = 0; a < kh; ++a) {
    const int64_t row = base + static_cast<int64_t>(wi.start + a * dh) * W;
    for (int c = 0; c < kw; ++c) {
      const int64_t off = (row + wj.start + c * dw) * D;
      acc_t part = 0;
#pragma unroll
      for (int s = 0; s < SLOTS; ++s) {
        const int d = lane + s * team;
        if (d < D) part += qv[s] * static_cast<acc_t>(k[off + d]);
      }
      for (int o = team / 2; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o, team);
      if (rpb != nullptr) {
        part += static_cast<acc_t>(rpb[(static_cast<int64_t>(h) * (2 * kh - 1) + wi.bias + a) * (2 * kw - 1) + wj.bias + c]);
      }
      const acc_t m_new = part > m ? part : m;
      const acc_t corr = exp_acc(m - m_new);  // 0 at the first neighbour (m = -inf)
      const acc_t p = exp_acc(part - m_new);
      l = l * corr + p;
#pragma unroll
      for (int s = 0; s < SLOTS; ++s) {
        const int d = lane + s * team;
        if (d < D) acc[s] = acc[s] * corr + p * static_cast<acc_t>(v[off + d]);
      }
      m = m_new;
    }
  }
  if (!active) return;
  const acc_t inv = acc_t(1) / l;
#pragma unroll
  for (int s = 0; s < SLOTS; ++s) {
    const int d = lane + s * team;
    if (d < D) out[pix * D + d] = static_cast<scalar_t>(acc[s] * inv);
  }
}

template <typename scalar_t, int SLOTS>
void launch_fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const scalar_t* rpb, at::Tensor& out,
                  int team, double scale, int kh, int kw, int dh, int dw) {
  const int64_t queries = q.size(0) * q.size(1) * q.size(2) * q.size(3);
  const int64_t threads = queries * team;
  fused_kernel<scalar_t, SLOTS><<<grid_for(threads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), rpb, out.data_ptr<scalar_t>(), queries,
      team, static_cast<int>(q.size(1)), static_cast<int>(q.size(2)), static_cast<int>(q.size(3)),
      static_cast<int>(q.size(4)), kh, kw, dh, dw, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor na2d_qk_cuda(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& rpb, int kh,
                        int kw, int dh, int dw) {
  const c10::cuda::CUDAGuard guard(q.device());
  auto attn = at::empty({q.size(0), q.size(1), q.size(2), q.size(3), static_cast<int64_t>(kh) * kw}, q.options());
  const int64_t total = attn.numel();
  if (total == 0) return attn;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_qk", [&] {
    const scalar_t* bias = rpb.has_value() ? rpb->data_ptr<scalar_t>() : nullptr;
    qk_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), bias, attn.data_ptr<scalar_t>(), total,
        static_cast<int>(q.size(1)), static_cast<int>(q.size(2)), static_cast<int>(q.size(3)),
        static_cast<int>(q.size(4)), kh, kw, dh, dw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return attn;
}

at::Tensor na2d_av_cuda(const at::Tensor& attn, const at::Tensor& v, int kh, int kw, int dh, int dw) {
  const c10::cuda::CUDAGuard guard(v.device());
  auto out = at::empty_like(v);
  const int64_t total = out.numel();
  if (total == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "na2d_av", [&] {
    av_kernel<scalar_t><<<grid_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total,
        static_cast<int>(v.size(2)), static_cast<int>(v.size(3)), static_cast<int>(v.size(4)), kh, kw, dh, dw);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor na2d_fused_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& rpb, double scale, int kh, int kw, int dh, int dw) {
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty_like(q);
  if (out.numel() == 0) return out;
  const int D = static_cast<int>(q.size(4));
  int team = 1;
  while (team < D && team < 32) team *= 2;
  const int slots = (D + team - 1) / team;  // 1..8 for D <= 256 (checked by the caller)
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "na2d_fused", [&] {
    const scalar_t* bias = rpb.has_value() ? rpb->data_ptr<scalar_t>() : nullptr;
    if (slots <= 1) {
      launch_fused<scalar_t, 1>(q, k, v, bias, out, team, scale, kh, kw, dh, dw);
    } else if (slots <= 2) {
      launch_fused<scalar_t, 2>(q, k, v, bias, out, team, scale, kh, kw, dh, dw);
    } else if (slots <= 4) {
      launch_fused<scalar_t, 4>(q, k, v, bias, out, team, scale, kh, kw, dh, dw);
    } else {
      launch_fused<scalar_t, 8>(q, k, v, bias, out, team, scale, kh, kw, dh, dw);
    }
  });
  return out;
}
