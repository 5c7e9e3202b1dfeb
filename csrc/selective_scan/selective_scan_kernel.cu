// Selective scan (Mamba S6) forward kernel; semantics in archs/ops/selective_scan.py.
//
// Layout. One warp owns one (batch, channel) sequence; a block holds up to 8 warps whose channels share one B/C
// group, so the block stages that group's B and C once in shared memory for all of them. The sequence is walked in
// segments of 256 steps: lane j owns steps [8j, 8j+8) of the segment.
//
// Per segment and per tile of NS states (all in float32):
//   1. each lane scans its 8 steps from a zero state: the affine map h -> P h + H of its steps
//      (P = exp(A * sum(delta)), H = the end state from zero);
//   2. a warp-wide inclusive scan (shuffles) composes the lanes' maps; lane j's entry state is lane j-1's prefix
//      applied to the carry (the state before the segment), and lane 31's prefix gives the next carry;
//   3. each lane rescans its 8 steps from its entry state and accumulates y_t += <C_t, h_t>.
// Then y = (y + D u) * silu(z) goes back through shared memory for coalesced stores.
//
// Long sequences with few (batch, channel) pairs are also split along L into parts that run in parallel: a first
// launch computes each part's map (P, H) from a zero state, a small kernel chains the parts' maps into entry states,
// and the final launch scans each part from its entry state.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <climits>

#include "selective_scan.h"

namespace {

constexpr int kItems = 8;                  // steps per lane per segment
constexpr int kLanes = 32;
constexpr int kSeg = kLanes * kItems;      // steps per segment
constexpr int kPad = kItems + 1;           // odd row stride: lane j reads j*kPad + i without bank conflicts
constexpr int kSegPad = kLanes * kPad;     // floats per staged segment row
constexpr int kMaxWarps = 8;
constexpr int kRows = 4;                   // per-warp shared rows: u, delta, z, y
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory slot of segment step e (lane e / kItems, item e % kItems).
__device__ __forceinline__ int spos(int e) { return e + e / kItems; }

template <typename T>
__device__ __forceinline__ float ld(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

struct KParams {
  int64_t batch, dim, len, n, per_group, ctiles;  // per_group = dim / groups; ctiles = blocks per group and batch
  int64_t part_len;                               // steps per part (a multiple of kSeg)
  int parts;
  BCLayout b, c;
  bool softplus;
  const float* A;      // (dim, N)
  const float* D;      // (dim) or null
  const float* dbias;  // (dim) or null
  float* last;         // (batch, dim, N) or null
  float* wsP;          // (parts, batch, dim, N): each part's decay, summary launch only
  float* wsH;          // (parts, batch, dim, N): each part's end state from zero, summary launch only
  const float* entry;  // (parts, batch, dim, N): state entering each part, final launch; null = zero
};

// kFinal = false: the summary launch (no output, writes wsP/wsH). kFinal = true: writes out (and last).
template <typename T, typename TW, int NS, bool kFinal>
__global__ void __launch_bounds__(kLanes* kMaxWarps, 2)
    scan_fwd(const T* __restrict__ u, const T* __restrict__ delta, const TW* __restrict__ Bm,
             const TW* __restrict__ Cm, const T* __restrict__ z, T* __restrict__ out, const KParams p) {
  extern __shared__ float smem[];
  const int warps = blockDim.x / kLanes;
  const int warp = threadIdx.x / kLanes;
  const int lane = threadIdx.x % kLanes;
  const int64_t b = blockIdx.x / p.ctiles;
  const int64_t cig = (blockIdx.x % p.ctiles) * warps + warp;  // channel within the group
  const int64_t g = blockIdx.y;
  const int part = blockIdx.z;
  const bool active = cig < p.per_group;  // warp-uniform; idle warps still join every __syncthreads
  const int64_t d = g * p.per_group + (active ? cig : 0);
  const int N = static_cast<int>(p.n);

  float* Bs = smem;                                       // [NS][kSegPad]
  float* Cs = Bs + NS * kSegPad;                          // [NS][kSegPad]
  float* us = Cs + NS * kSegPad + warp * kRows * kSegPad;  // this warp's u row
  float* ds = us + kSegPad;                               // delta (after bias and softplus)
  float* zs = ds + kSegPad;                               // z
  float* ys = zs + kSegPad;                               // y accumulated over state tiles, then the output
  float* carry = Cs + NS * kSegPad + warps * kRows * kSegPad + warp * N;  // [N] state before the segment

  const int64_t bd = b * p.dim + d;
  const int64_t row = bd * p.len;  // this sequence in u / delta / z / out
  const int64_t state = (static_cast<int64_t>(part) * p.batch * p.dim + bd) * N;  // this sequence in ws / entry
  for (int k = lane; k < N; k += kLanes) {
    carry[k] = (kFinal && p.entry != nullptr) ? p.entry[state + k] : 0.f;
  }
  const float dskip = p.D != nullptr ? p.D[d] : 0.f;
  const float dbias = p.dbias != nullptr ? p.dbias[d] : 0.f;
  const TW* Bb = Bm + b * p.b.sb + g * p.b.sg;
  const TW* Cb = Cm + b * p.c.sb + g * p.c.sg;
  const int64_t t_begin = static_cast<int64_t>(part) * p.part_len;
  const int64_t t_end = t_begin + p.part_len < p.len ? t_begin + p.part_len : p.len;
  // This lane's slots in the per-warp rows (items i = 0..kItems-1 at +i) and in the B/C tiles (+k*kSegPad+i).
  const float* ul = us + lane * kPad;
  const float* dl = ds + lane * kPad;
  const float* zl = zs + lane * kPad;
  float* yl = ys + lane * kPad;
  const float* Bl = Bs + lane * kPad;
  const float* Cl = Cs + lane * kPad;
  float dt_total = 0.f;  // this lane's sum of delta over the part (summary launch)

  for (int64_t seg0 = t_begin; seg0 < t_end; seg0 += kSeg) {
    __syncwarp();  // all lanes are done reading the previous segment's rows
    for (int e = lane; e < kSeg; e += kLanes) {
      const int64_t t = seg0 + e;
      float uv = 0.f, dv = 0.f, zv = 0.f;  // past the end: delta = 0, u = 0 is the identity step
      if (active && t < t_end) {
        uv = ld(u, row + t);
        dv = ld(delta, row + t) + dbias;
        if (p.softplus) dv = dv <= 20.f ? log1pf(expf(dv)) : dv;  // torch's softplus threshold
        if (kFinal && z != nullptr) zv = ld(z, row + t);
      }
      us[spos(e)] = uv;
      ds[spos(e)] = dv;
      zs[spos(e)] = zv;
      ys[spos(e)] = 0.f;
    }
    __syncwarp();
    float dt_sum = 0.f;
#pragma unroll
    for (int i = 0; i < kItems; ++i) dt_sum += dl[i];
    dt_total += dt_sum;

    for (int n0 = 0; n0 < N; n0 += NS) {
      __syncthreads();  // every warp is done with the previous B/C tile
      for (int idx = threadIdx.x; idx < NS * kSeg; idx += blockDim.x) {
        const int k = idx / kSeg, e = idx % kSeg;
        const int64_t t = seg0 + e;
        const int nn = n0 + k;
        float bv = 0.f, cv = 0.f;
        if (nn < N && t < t_end) {
          bv = ld(Bb, nn * p.b.sn + t * p.b.sl);
          cv = ld(Cb, nn * p.c.sn + t * p.c.sl);
        }
        Bs[k * kSegPad + spos(e)] = bv;
        Cs[k * kSegPad + spos(e)] = cv;
      }
      __syncthreads();
      if (!active) continue;

      float a2[NS], P[NS], H[NS];
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        a2[k] = n0 + k < N ? p.A[d * N + n0 + k] * kLog2e : 0.f;  // exp(x A) = exp2(x A log2 e)
        P[k] = exp2f(a2[k] * dt_sum);
        H[k] = 0.f;
      }
      // 1. this lane's steps from a zero state
#pragma unroll 1
      for (int i = 0; i < kItems; ++i) {
        const float dti = dl[i], dui = dti * ul[i];
#pragma unroll
        for (int k = 0; k < NS; ++k) H[k] = fmaf(exp2f(dti * a2[k]), H[k], dui * Bl[k * kSegPad + i]);
      }
      // 2. inclusive scan over lanes of h -> P h + H: (earlier, later) composes to (P' P, P' H + H')
#pragma unroll
      for (int off = 1; off < kLanes; off <<= 1) {
#pragma unroll
        for (int k = 0; k < NS; ++k) {
          const float Pp = __shfl_up_sync(kFull, P[k], off);
          const float Hp = __shfl_up_sync(kFull, H[k], off);
          if (lane >= off) {
            H[k] = fmaf(P[k], Hp, H[k]);
            P[k] *= Pp;
          }
        }
      }
      // entry state of this lane (into H) and the carry after the segment (into P)
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        const float c = n0 + k < N ? carry[n0 + k] : 0.f;
        const float Pe = __shfl_up_sync(kFull, P[k], 1);
        const float He = __shfl_up_sync(kFull, H[k], 1);
        const float Pl = __shfl_sync(kFull, P[k], kLanes - 1);
        const float Hl = __shfl_sync(kFull, H[k], kLanes - 1);
        H[k] = lane == 0 ? c : fmaf(Pe, c, He);
        P[k] = fmaf(Pl, c, Hl);
      }
      __syncwarp();  // every lane has read the old carry
      if (lane == 0) {
#pragma unroll
        for (int k = 0; k < NS; ++k) {
          if (n0 + k < N) carry[n0 + k] = P[k];
        }
      }
      if constexpr (kFinal) {
        // 3. rescan from the entry state, reading y out (each lane only touches its own y slots)
#pragma unroll 1
        for (int i = 0; i < kItems; ++i) {
          const float dti = dl[i], dui = dti * ul[i];
          float acc = 0.f;
#pragma unroll
          for (int k = 0; k < NS; ++k) {
            H[k] = fmaf(exp2f(dti * a2[k]), H[k], dui * Bl[k * kSegPad + i]);
            acc = fmaf(Cl[k * kSegPad + i], H[k], acc);
          }
          yl[i] += acc;
        }
      }
    }

    if constexpr (kFinal) {
      if (active) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          float o = fmaf(dskip, ul[i], yl[i]);
          if (z != nullptr) {
            const float zv = zl[i];
            o *= zv / (1.f + expf(-zv));  // silu
          }
          yl[i] = o;
        }
        __syncwarp();
        for (int e = lane; e < kSeg; e += kLanes) {
          const int64_t t = seg0 + e;
          if (t < t_end) out[row + t] = static_cast<T>(ys[spos(e)]);
        }
      }
    }
  }

  __syncwarp();  // the last carry update is visible to every lane
  if constexpr (!kFinal) {
#pragma unroll
    for (int off = kLanes / 2; off > 0; off >>= 1) dt_total += __shfl_xor_sync(kFull, dt_total, off);
    if (active) {
      for (int k = lane; k < N; k += kLanes) {
        p.wsH[state + k] = carry[k];
        p.wsP[state + k] = exp2f(p.A[d * N + k] * kLog2e * dt_total);
      }
    }
  } else {
    if (active && p.last != nullptr && part == p.parts - 1) {
      for (int k = lane; k < N; k += kLanes) p.last[bd * N + k] = carry[k];
    }
  }
}

// entry[part] = state before the part, from the parts' maps h -> wsP h + wsH; one thread per (batch, dim, N).
__global__ void chain_parts(const float* __restrict__ wsP, const float* __restrict__ wsH, float* __restrict__ entry,
                            int parts, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float h = 0.f;
  for (int q = 0; q < parts; ++q) {
    entry[q * count + i] = h;
    h = fmaf(wsP[q * count + i], h, wsH[q * count + i]);
  }
}

template <typename T, typename TW, int NS, bool kFinal>
void launch(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B, const at::Tensor& C,
            const std::optional<at::Tensor>& z, at::Tensor& out, const KParams& p, int64_t groups, int warps,
            cudaStream_t stream) {
  const size_t smem = sizeof(float) * (2 * NS * kSegPad + static_cast<size_t>(warps) * (kRows * kSegPad + p.n));
  const auto* props = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(smem <= props->sharedMemPerBlockOptin, "selective_scan: d_state=", p.n,
              " needs more shared memory than this GPU has per block");
  auto kern = scan_fwd<T, TW, NS, kFinal>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(p.batch * p.ctiles), static_cast<unsigned>(groups),
                  static_cast<unsigned>(p.parts));
  kern<<<grid, warps * kLanes, smem, stream>>>(
      reinterpret_cast<const T*>(u.const_data_ptr()), reinterpret_cast<const T*>(delta.const_data_ptr()),
      reinterpret_cast<const TW*>(B.const_data_ptr()), reinterpret_cast<const TW*>(C.const_data_ptr()),
      z.has_value() ? reinterpret_cast<const T*>(z->const_data_ptr()) : nullptr,
      reinterpret_cast<T*>(out.mutable_data_ptr()), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int NS>
void run(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B, const at::Tensor& C,
         const std::optional<at::Tensor>& z, at::Tensor& out, KParams p, int64_t groups, int warps,
         cudaStream_t stream) {
  const bool bc_f32 = B.scalar_type() == at::kFloat;  // else B/C have u's dtype (checked by the caller)
  at::Tensor ws;
  if (p.parts > 1) {
    ws = at::empty({3, p.parts, p.batch, p.dim, p.n}, u.options().dtype(at::kFloat));
    p.wsP = ws[0].data_ptr<float>();
    p.wsH = ws[1].data_ptr<float>();
    if (bc_f32) {
      launch<T, float, NS, false>(u, delta, B, C, z, out, p, groups, warps, stream);
    } else {
      launch<T, T, NS, false>(u, delta, B, C, z, out, p, groups, warps, stream);
    }
    const int64_t count = p.batch * p.dim * p.n;
    const int threads = 256;
    chain_parts<<<static_cast<unsigned>((count + threads - 1) / threads), threads, 0, stream>>>(
        p.wsP, p.wsH, ws[2].data_ptr<float>(), p.parts, count);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    p.entry = ws[2].data_ptr<float>();
    p.wsP = p.wsH = nullptr;
  }
  if (bc_f32) {
    launch<T, float, NS, true>(u, delta, B, C, z, out, p, groups, warps, stream);
  } else {
    launch<T, T, NS, true>(u, delta, B, C, z, out, p, groups, warps, stream);
  }
}

template <typename T>
void run_ns(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& B, const at::Tensor& C,
            const std::optional<at::Tensor>& z, at::Tensor& out, const KParams& p, int64_t groups, int warps,
            cudaStream_t stream) {
  // The smallest state tile that holds d_state (registers scale with it); larger d_state loops over tiles of 16.
  if (p.n <= 4) {
    run<T, 4>(u, delta, B, C, z, out, p, groups, warps, stream);
  } else if (p.n <= 8) {
    run<T, 8>(u, delta, B, C, z, out, p, groups, warps, stream);
  } else {
    run<T, 16>(u, delta, B, C, z, out, p, groups, warps, stream);
  }
}

}  // namespace

void selective_scan_fwd_cuda(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                             const at::Tensor& C, const std::optional<at::Tensor>& D,
                             const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                             at::Tensor& out, at::Tensor& last, const ScanArgs& a) {
  const at::cuda::OptionalCUDAGuard guard(u.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  KParams p{};
  p.batch = a.batch;
  p.dim = a.dim;
  p.len = a.len;
  p.n = a.n;
  p.per_group = a.dim / a.groups;
  p.b = a.b;
  p.c = a.c;
  p.softplus = a.softplus;
  p.A = A.data_ptr<float>();
  p.D = D.has_value() ? D->data_ptr<float>() : nullptr;
  p.dbias = delta_bias.has_value() ? delta_bias->data_ptr<float>() : nullptr;
  p.last = last.defined() ? last.data_ptr<float>() : nullptr;
  p.wsP = p.wsH = nullptr;
  p.entry = nullptr;

  const int warps = static_cast<int>(std::min<int64_t>(kMaxWarps, p.per_group));
  p.ctiles = (p.per_group + warps - 1) / warps;
  TORCH_CHECK(a.batch * p.ctiles <= INT_MAX, "selective_scan: batch * dim too large for one launch");

  // Split L when there are too few sequences to fill the GPU, keeping parts of at least 8 segments.
  const int64_t blocks = a.batch * p.ctiles * a.groups;
  const int64_t segs = (a.len + kSeg - 1) / kSeg;
  const int64_t want = 4 * static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  int64_t parts = 1;
  if (blocks < want) parts = std::max<int64_t>(1, std::min<int64_t>({(want + blocks - 1) / blocks, segs / 8, 64}));
  const int64_t segs_per_part = (segs + parts - 1) / parts;
  p.part_len = segs_per_part * kSeg;
  p.parts = static_cast<int>((segs + segs_per_part - 1) / segs_per_part);  // no empty part

  switch (u.scalar_type()) {
    case at::kFloat:
      run_ns<float>(u, delta, B, C, z, out, p, a.groups, warps, stream);
      break;
    case at::kHalf:
      run_ns<at::Half>(u, delta, B, C, z, out, p, a.groups, warps, stream);
      break;
    case at::kBFloat16:
      run_ns<at::BFloat16>(u, delta, B, C, z, out, p, a.groups, warps, stream);
      break;
    default:
      TORCH_CHECK(false, "selective_scan: unsupported dtype ", u.scalar_type());
  }
}
