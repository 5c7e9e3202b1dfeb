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
//   av:    for the head dims and alignment of the fused row kernel below, av_row_kernel: one thread per query with
//          its D-float output row in registers, 16-byte value loads, the same 2-D query tiles; otherwise av_kernel,
//          one thread per (query, channel), consecutive threads reading consecutive channels of each value row.
//   fused, two variants of softmax(q * scale . k + rpb) x v with an online softmax (running max m and sum l, the
//   output rescaled by exp(m_old - m_new) at each neighbour), so the weights never go to memory:
//   - row kernel (fused_row_kernel), used for float32 / float16 / bfloat16 when D is 8, 16, 24, 32, 48 or 64 and
//     q, k, v and the output start on 16-byte boundaries (so every D-row is a whole number of 16-byte chunks):
//     one thread per query holding its scaled q row and its output row, D floats each, in registers; key and value
//     rows come in as 16-byte vector loads (uint4 through the read-only path) and are widened to float in
//     registers. A block of 256 threads covers a 2-D tile of queries (32x8, 16x16 or 8x32, whichever pads the
//     image least) of one (batch, head) image, so its neighbourhoods overlap and the key/value rows come from L1/L2
//     after their first read; threads of a tile that falls past the image edge do nothing. Blocks walk the tiles
//     grid-stride (int64 tile index). The per-query work (fused_query) is a host/device function.
//   - team kernel (fused_kernel), everything else (float64, other head dims, unaligned pointers): a team of
//     T = min(32, pow2 >= D) lanes per query, each lane holding ceil(D / T) channels of q and of the output in
//     registers; per neighbour the lanes' partial dot products are summed with warp shuffles.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

namespace {

constexpr int kThreads = 256;

struct Window {
  int start;  // first key index; key n is start + n * dilation
  int bias;   // rpb row/column of key 0; key n uses bias + n
};

__host__ __device__ __forceinline__ Window window(int i, int length, int kernel, int dilation) {
  const int r = i % dilation;
  const int ip = i / dilation;
  const int lr = (length - r + dilation - 1) / dilation;
  const int lo = ip - kernel / 2 > 0 ? ip - kernel / 2 : 0;
  const int s = lo < lr - kernel ? lo : lr - kernel;
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

// ---------------------------------------------------------------------------------------------------------------------
// Row kernel: one thread per query, the whole head dim in registers (see the header). The per-query and per-tile
// functions are __host__ __device__ so that they can be run on a CPU as well.

constexpr int kRowThreadsLog2 = 8;
constexpr int kRowThreads = 1 << kRowThreadsLog2;  // one block = one tile of this many queries

struct Geometry {
  int heads, H, W, kh, kw, dh, dw;
};

__host__ __device__ __forceinline__ float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

__host__ __device__ __forceinline__ uint32_t float_to_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

__host__ __device__ __forceinline__ float exp_row(float x) {
#ifdef __CUDA_ARCH__
  return __expf(x);  // as exp_acc: exp(-inf) = 0
#else
  return std::exp(x);
#endif
}

// 16 bytes at a 16-byte aligned address, through the read-only data path on the device
__host__ __device__ __forceinline__ uint4 load16(const void* p) {
#ifdef __CUDA_ARCH__
  return __ldg(static_cast<const uint4*>(p));
#else
  uint4 r;
  std::memcpy(&r, p, sizeof r);
  return r;
#endif
}

__host__ __device__ __forceinline__ void store16(void* p, const uint4& r) {
#ifdef __CUDA_ARCH__
  *static_cast<uint4*>(p) = r;
#else
  std::memcpy(p, &r, sizeof r);
#endif
}

// One 16-byte chunk of a row, kElems values: unpack widens them to float, pack narrows f[n] * s (round to nearest).
template <typename scalar_t>
struct Chunk;

template <>
struct Chunk<float> {
  static constexpr int kElems = 4;
  static __host__ __device__ __forceinline__ void unpack(const uint4& r, float* f) {
    f[0] = bits_to_float(r.x);
    f[1] = bits_to_float(r.y);
    f[2] = bits_to_float(r.z);
    f[3] = bits_to_float(r.w);
  }
  static __host__ __device__ __forceinline__ uint4 pack(const float* f, float s) {
    return make_uint4(float_to_bits(f[0] * s), float_to_bits(f[1] * s), float_to_bits(f[2] * s),
                      float_to_bits(f[3] * s));
  }
};

// 16-bit types: value 2n sits in the low half of 32-bit word n (little endian)
template <typename half_t>
struct Chunk16 {
  static constexpr int kElems = 8;
  static __host__ __device__ __forceinline__ uint32_t narrow(float lo, float hi) {
    return static_cast<uint32_t>(half_t(lo).x) | (static_cast<uint32_t>(half_t(hi).x) << 16);
  }
  static __host__ __device__ __forceinline__ void unpack(const uint4& r, float* f) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int n = 0; n < 4; ++n) {
      if constexpr (std::is_same_v<half_t, at::BFloat16>) {
        f[2 * n] = bits_to_float(w[n] << 16);  // bfloat16 is the top half of a float32
        f[2 * n + 1] = bits_to_float(w[n] & 0xffff0000u);
      } else {
        f[2 * n] = static_cast<float>(half_t(static_cast<uint16_t>(w[n] & 0xffffu), half_t::from_bits()));
        f[2 * n + 1] = static_cast<float>(half_t(static_cast<uint16_t>(w[n] >> 16), half_t::from_bits()));
      }
    }
  }
  static __host__ __device__ __forceinline__ uint4 pack(const float* f, float s) {
    return make_uint4(narrow(f[0] * s, f[1] * s), narrow(f[2] * s, f[3] * s), narrow(f[4] * s, f[5] * s),
                      narrow(f[6] * s, f[7] * s));
  }
};

template <>
struct Chunk<at::Half> : Chunk16<at::Half> {};

template <>
struct Chunk<at::BFloat16> : Chunk16<at::BFloat16> {};

// out[pix] = softmax_n(q[pix] * scale . k[key n] + rpb[h, bias n]) x v[key n] for the query (bh, i, j), where bh is
// b * heads + h. The rows of q, k, v and out are 16-byte aligned (checked by the host).
template <typename scalar_t, int D>
__host__ __device__ __forceinline__ void fused_query(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                                     const scalar_t* __restrict__ v, const scalar_t* __restrict__ rpb,
                                                     scalar_t* __restrict__ out, const Geometry& g, int64_t bh, int i,
                                                     int j, float scale) {
  using IO = Chunk<scalar_t>;
  constexpr int E = IO::kElems;
  static_assert(D % E == 0 && D % 4 == 0, "a row must be a whole number of 16-byte chunks");
  const int64_t image = bh * g.H * g.W;  // first pixel of this (batch, head)
  const int64_t pix = image + static_cast<int64_t>(i) * g.W + j;

  float qv[D], acc[D];
#pragma unroll
  for (int c = 0; c < D / E; ++c) IO::unpack(load16(q + pix * D + c * E), qv + c * E);
#pragma unroll
  for (int d = 0; d < D; ++d) {
    qv[d] *= scale;
    acc[d] = 0.f;
  }

  const Window wi = window(i, g.H, g.kh, g.dh), wj = window(j, g.W, g.kw, g.dw);
  const int bias_w = 2 * g.kw - 1;
  const scalar_t* bias =
      rpb == nullptr ? nullptr : rpb + ((bh % g.heads) * (2 * g.kh - 1) + wi.bias) * bias_w + wj.bias;
  const int64_t step = static_cast<int64_t>(g.dw) * D;  // from one key of a window row to the next
  float m = -INFINITY, l = 0.f;
  for (int a = 0; a < g.kh; ++a) {
    const int64_t first = (image + static_cast<int64_t>(wi.start + a * g.dh) * g.W + wj.start) * D;
    const scalar_t* kp = k + first;
    const scalar_t* vp = v + first;
    for (int c = 0; c < g.kw; ++c, kp += step, vp += step) {
      float kf[D], vf[D];
#pragma unroll
      for (int n = 0; n < D / E; ++n) IO::unpack(load16(kp + n * E), kf + n * E);
#pragma unroll
      for (int n = 0; n < D / E; ++n) IO::unpack(load16(vp + n * E), vf + n * E);
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;  // four partial sums: a shorter dependency chain
#pragma unroll
      for (int d = 0; d < D; d += 4) {
        s0 += qv[d] * kf[d];
        s1 += qv[d + 1] * kf[d + 1];
        s2 += qv[d + 2] * kf[d + 2];
        s3 += qv[d + 3] * kf[d + 3];
      }
      float s = (s0 + s1) + (s2 + s3);
      if (bias != nullptr) s += static_cast<float>(bias[a * bias_w + c]);
      const float m_new = s > m ? s : m;
      const float corr = exp_row(m - m_new);  // 0 at the first neighbour (m = -inf)
      const float p = exp_row(s - m_new);
      l = l * corr + p;
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] = acc[d] * corr + p * vf[d];
      m = m_new;
    }
  }
  const float inv = 1.f / l;
#pragma unroll
  for (int c = 0; c < D / E; ++c) store16(out + pix * D + c * E, IO::pack(acc + c * E, inv));
}

// The query (bh, i, j) that `thread` (< kRowThreads) handles in tile `tile` (row-major over the tiles of each image,
// images in (batch, head) order) of 2^tw_log2 x 2^(8 - tw_log2) queries, row-major within the tile; false past the
// image edge.
__host__ __device__ __forceinline__ bool tile_query(const Geometry& g, int64_t tile, int thread, int tw_log2,
                                                   int tiles_w, int tiles_h, int64_t& bh, int& i, int& j) {
  const int64_t per_image = static_cast<int64_t>(tiles_w) * tiles_h;
  bh = tile / per_image;
  const int64_t rest = tile - bh * per_image;
  const int ty = static_cast<int>(rest / tiles_w), tx = static_cast<int>(rest % tiles_w);
  i = (ty << (kRowThreadsLog2 - tw_log2)) + (thread >> tw_log2);
  j = (tx << tw_log2) + (thread & ((1 << tw_log2) - 1));
  return i < g.H && j < g.W;
}

template <typename scalar_t, int D>
__host__ __device__ __forceinline__ void fused_tile(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                                                    const scalar_t* __restrict__ v, const scalar_t* __restrict__ rpb,
                                                    scalar_t* __restrict__ out, const Geometry& g, int64_t tile,
                                                    int thread, int tw_log2, int tiles_w, int tiles_h, float scale) {
  int64_t bh;
  int i, j;
  if (tile_query(g, tile, thread, tw_log2, tiles_w, tiles_h, bh, i, j)) {
    fused_query<scalar_t, D>(q, k, v, rpb, out, g, bh, i, j, scale);
  }
}

// out[pix] = sum_n attn[pix, n] x v[key n] for the query (bh, i, j), summed in float32 in neighbour order (as
// av_kernel). Rows of v and out are 16-byte aligned (checked by the host); attn rows (kh*kw values) need not be.
template <typename scalar_t, int D>
__host__ __device__ __forceinline__ void av_query(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ v,
                                                  scalar_t* __restrict__ out, const Geometry& g, int64_t bh, int i,
                                                  int j) {
  using IO = Chunk<scalar_t>;
  constexpr int E = IO::kElems;
  static_assert(D % E == 0, "a row must be a whole number of 16-byte chunks");
  const int64_t image = bh * g.H * g.W;
  const int64_t pix = image + static_cast<int64_t>(i) * g.W + j;
  const scalar_t* ap = attn + pix * (g.kh * g.kw);
  float acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) acc[d] = 0.f;
  const Window wi = window(i, g.H, g.kh, g.dh), wj = window(j, g.W, g.kw, g.dw);
  const int64_t step = static_cast<int64_t>(g.dw) * D;
  for (int a = 0; a < g.kh; ++a) {
    const scalar_t* vp = v + (image + static_cast<int64_t>(wi.start + a * g.dh) * g.W + wj.start) * D;
    for (int c = 0; c < g.kw; ++c, vp += step) {
      const float w = static_cast<float>(ap[a * g.kw + c]);
      float vf[D];
#pragma unroll
      for (int n = 0; n < D / E; ++n) IO::unpack(load16(vp + n * E), vf + n * E);
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] += w * vf[d];
    }
  }
#pragma unroll
  for (int c = 0; c < D / E; ++c) store16(out + pix * D + c * E, IO::pack(acc + c * E, 1.f));
}

template <typename scalar_t, int D>
__global__ void __launch_bounds__(kRowThreads)
    av_row_kernel(const scalar_t* __restrict__ attn, const scalar_t* __restrict__ v, scalar_t* __restrict__ out,
                  Geometry g, int64_t tiles, int tw_log2, int tiles_w, int tiles_h) {
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    int64_t bh;
    int i, j;
    if (tile_query(g, t, static_cast<int>(threadIdx.x), tw_log2, tiles_w, tiles_h, bh, i, j)) {
      av_query<scalar_t, D>(attn, v, out, g, bh, i, j);
    }
  }
}

template <typename scalar_t, int D>
__global__ void __launch_bounds__(kRowThreads)
    fused_row_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
                     const scalar_t* __restrict__ rpb, scalar_t* __restrict__ out, Geometry g, int64_t tiles,
                     int tw_log2, int tiles_w, int tiles_h, float scale) {
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    fused_tile<scalar_t, D>(q, k, v, rpb, out, g, t, static_cast<int>(threadIdx.x), tw_log2, tiles_w, tiles_h, scale);
  }
}

// log2 of the tile width for an H x W image: of the 32x8, 16x16 and 8x32 tiles, the one that pads it least (wider on
// ties: a warp then reads longer runs of each key row)
int row_tile_log2(int H, int W) {
  int best = 5;
  int64_t best_area = -1;
  for (int lg = 5; lg >= 3; --lg) {
    const int64_t tw = int64_t{1} << lg, th = kRowThreads >> lg;
    const int64_t area = (H + th - 1) / th * th * ((W + tw - 1) / tw * tw);
    if (best_area < 0 || area < best_area) {
      best = lg;
      best_area = area;
    }
  }
  return best;
}

template <typename scalar_t, int D>
void launch_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const scalar_t* rpb, at::Tensor& out,
                 double scale, int kh, int kw, int dh, int dw) {
  const Geometry g{static_cast<int>(q.size(1)), static_cast<int>(q.size(2)), static_cast<int>(q.size(3)), kh, kw, dh,
                   dw};
  const int lg = row_tile_log2(g.H, g.W);
  const int tw = 1 << lg, th = kRowThreads >> lg;
  const int tiles_w = (g.W + tw - 1) / tw, tiles_h = (g.H + th - 1) / th;
  const int64_t tiles = q.size(0) * q.size(1) * tiles_w * tiles_h;
  const auto grid = static_cast<unsigned int>(std::min<int64_t>(tiles, std::numeric_limits<int32_t>::max()));
  fused_row_kernel<scalar_t, D><<<grid, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), rpb, out.data_ptr<scalar_t>(), g, tiles,
      lg, tiles_w, tiles_h, static_cast<float>(scale));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(std::integral_constant<int, D>{}) for the head dims the row kernels are built for; false for others.
template <typename F>
bool with_row_dim(int64_t D, F&& f) {
  switch (D) {
    case 8: f(std::integral_constant<int, 8>{}); return true;
    case 16: f(std::integral_constant<int, 16>{}); return true;
    case 24: f(std::integral_constant<int, 24>{}); return true;
    case 32: f(std::integral_constant<int, 32>{}); return true;
    case 48: f(std::integral_constant<int, 48>{}); return true;
    case 64: f(std::integral_constant<int, 64>{}); return true;
    default: return false;
  }
}

// a contiguous view at an odd storage offset may start off a 16-byte boundary
inline bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

// Runs the row kernel and returns true when it takes this dtype, head dim and alignment; false leaves it to the team
// kernel.
template <typename scalar_t>
bool try_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const scalar_t* rpb, at::Tensor& out,
              double scale, int kh, int kw, int dh, int dw) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    if (!aligned16(q) || !aligned16(k) || !aligned16(v) || !aligned16(out)) return false;
    return with_row_dim(q.size(4), [&](auto d) {
      launch_rows<scalar_t, decltype(d)::value>(q, k, v, rpb, out, scale, kh, kw, dh, dw);
    });
  }
}

// The same for attn x v: one thread per query, the head dim in registers; false leaves it to av_kernel.
template <typename scalar_t>
bool try_av_rows(const at::Tensor& attn, const at::Tensor& v, at::Tensor& out, int kh, int kw, int dh, int dw) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    if (!aligned16(v) || !aligned16(out)) return false;
    const Geometry g{static_cast<int>(v.size(1)), static_cast<int>(v.size(2)), static_cast<int>(v.size(3)), kh, kw,
                     dh, dw};
    const int lg = row_tile_log2(g.H, g.W);
    const int tw = 1 << lg, th = kRowThreads >> lg;
    const int tiles_w = (g.W + tw - 1) / tw, tiles_h = (g.H + th - 1) / th;
    const int64_t tiles = v.size(0) * v.size(1) * tiles_w * tiles_h;
    const auto grid = static_cast<unsigned int>(std::min<int64_t>(tiles, std::numeric_limits<int32_t>::max()));
    return with_row_dim(v.size(4), [&](auto d) {
      av_row_kernel<scalar_t, decltype(d)::value><<<grid, kRowThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          attn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), g, tiles, lg, tiles_w,
          tiles_h);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
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
    if (try_av_rows<scalar_t>(attn, v, out, kh, kw, dh, dw)) return;
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
    if (try_rows<scalar_t>(q, k, v, bias, out, scale, kh, kw, dh, dw)) return;
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
