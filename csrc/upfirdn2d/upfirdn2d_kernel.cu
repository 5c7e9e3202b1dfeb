// upfirdn2d: out = downsample(conv(pad(upsample(x)), flip(kernel))).
//
// Coordinates: a tap ky of output row oy reads row r = oy * down_y + ky of the padded signal, which is row
// u = r - pad_y0 of the zero-inserted signal (a negative pad_y0 crops, the same formula). That row holds input row
// u / up_y when u is a multiple of up_y and 0 <= u / up_y < in_h, and zero otherwise. So only every up_y-th tap,
// starting at ky0 = (-(oy * down_y - pad_y0)) mod up_y, can be non-zero: the loops visit just those. Columns alike.
// The filter is applied flipped (true convolution), as BasicSR's upfirdn2d_native does with conv2d(flip(k)).
//
// Three kernels, one formula. Every output is a float32 sum over its non-zero taps in the same order (ky ascending,
// then kx ascending, one fused multiply-add each) and one rounding to the output dtype; samples outside the input are
// zeros in the tiled kernels where the fallback skips them, which adds an exact +-0 (the sums are bit-identical for
// finite taps).
//
// * upfirdn2d_fir_kernel: up = 1 on both axes, a 4x4 filter, down = 1 or 2 (StyleGAN2's blur and FIR downsample).
//   The taps live in registers; each thread computes a column strip of M outputs and slides down the input rows of
//   the shared-memory tile, loading each row's KW samples once for all the outputs that use it. With scalar loads
//   (V = 1) the tile is filled by fill_tile_fir: all of a thread's loads in flight at once, zeros over the whole
//   capacity, so the strips need no row test. With 16-byte vectors of a type of at most 4 bytes the tile holds the
//   input type itself (converted to float as the strips read it, the same value) and is filled by fill_tile_raw's
//   cp.async copies: no registers staged, every copy of the tile in flight at once; those tiles are also twice as
//   tall in down 2 (M = 8 rows per thread), twice the bytes per tile for the same latency.
// * upfirdn2d_tiled_kernel: any up/down factors, filters up to kMaxTiledTaps per axis, pads of any sign, as long as
//   the tile fits the shared-memory budget. Per output the loops of the fallback, reading shared memory.
// * upfirdn2d_kernel (fallback): one thread per output pixel reading global memory; larger filters, or factors so
//   large that an input tile does not fit in shared memory.
//
// Tiling (both tiled kernels): a block of 256 threads owns a tile of tile_w x tile_h outputs (one column per
// thread.x, rows_per_thread consecutive rows per thread.y) of one plane and walks a flat tile index (planes x tile
// rows x tile columns) with a grid stride, so the plane count and image sizes have no grid limits. The input
// rectangle the tile reads, [iy_lo, iy_hi] x [ix_lo, ix_hi] in input samples (only rows/columns some non-zero tap
// of some output of the tile touches: ix_lo = ceil((ox0 * down_x - pad_x0) / up_x), ix_hi = floor(((ox0 + ow - 1)
// * down_x - pad_x0 + kw - 1) / up_x)), is copied to shared memory as float with coalesced loads, zeros outside the
// image. When the row length is a multiple of a 16-byte vector (and x is 16-byte aligned) the copy uses 16-byte
// loads and the tile's first column is rounded down to a vector boundary. Capacity: at most
// floor(((tile_w - 1) * down_x + kw - 1) / up_x) + 1 (+ vector - 1) columns and the same expression in y rows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

namespace {

// Fallback: a warp along x keeps loads and stores coalesced; 8 rows per block share the taps in shared memory.
constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr int64_t kMaxGridYZ = 65535;

// Tiled kernels.
constexpr int kTiledThreads = 256;
constexpr int kMaxTiledTaps = 8;             // per axis; larger filters use the fallback
constexpr size_t kSmemBudget = 48 * 1024;    // the default dynamic shared-memory limit, no opt-in needed
constexpr int64_t kMaxGrid = INT_MAX;        // grid.x limit; the tile loop strides past it

// Integer helpers for b > 0 and any sign of a.
__host__ __device__ __forceinline__ int floor_div(int a, int b) {
  const int q = a / b;
  return (q * b != a && a < 0) ? q - 1 : q;
}
__host__ __device__ __forceinline__ int ceil_div(int a, int b) {
  const int q = a / b;
  return (q * b != a && a > 0) ? q + 1 : q;
}
__host__ __device__ __forceinline__ int floor_mod(int a, int m) {
  const int r = a % m;
  return r < 0 ? r + m : r;
}
__host__ __device__ __forceinline__ int round_up(int a, int m) { return (a + m - 1) / m * m; }

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

// ------------------------------------------------------------------------------------------------- tiled kernels

struct TileParams {
  int64_t planes;
  int in_h, in_w, out_h, out_w;
  int kh, kw, up_x, up_y, down_x, down_y, pad_x0, pad_y0;
  int tiles_x, tiles_y;   // tiles per plane along each axis
  int tile_w, tile_h;     // outputs per tile: tile_w = blockDim.x, tile_h = blockDim.y * rows_per_thread
  int rows_per_thread;
  int sw, sh;             // shared tile: row stride (elements, a multiple of the vector) and row capacity
};

// V consecutive elements, loaded and stored as one access of V * sizeof(T) bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ void store_as_float(float* dst, const Vec<T, V>& s) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      reinterpret_cast<float4*>(dst)[q] =
          make_float4(static_cast<float>(s.v[4 * q]), static_cast<float>(s.v[4 * q + 1]),
                      static_cast<float>(s.v[4 * q + 2]), static_cast<float>(s.v[4 * q + 3]));
    }
  } else if constexpr (V == 2) {
    *reinterpret_cast<float2*>(dst) = make_float2(static_cast<float>(s.v[0]), static_cast<float>(s.v[1]));
  } else {
    dst[0] = static_cast<float>(s.v[0]);
  }
}

// Copies input rows [sy0, sy0 + rows) x columns [sx0, sx0 + cols) of one plane to tile (row stride sw) as float,
// zeros outside the image. V > 1: sx0, cols and in_w are multiples of V, so a vector is wholly in or out. Each
// thread issues a batch of independent loads before its shared-memory stores, to keep many bytes in flight.
template <typename T, int V>
__device__ __forceinline__ void fill_tile(float* tile, int sw, const T* __restrict__ plane, int in_h, int in_w,
                                          int sy0, int sx0, int rows, int cols, int tid, int nthreads) {
  constexpr int kBatch = V == 1 ? static_cast<int>(32 / sizeof(T)) : 4;
  const int vcols = cols / V;
  const int total = rows * vcols;
  if (total <= 0) return;
  // (r, c) of element i, advanced by nthreads without a division per element.
  int r = tid / vcols;
  int c = tid - r * vcols;
  const int dr = nthreads / vcols;
  const int dc = nthreads - dr * vcols;
  Vec<T, V> zero;
#pragma unroll
  for (int e = 0; e < V; ++e) zero.v[e] = static_cast<T>(0.f);
  for (int i0 = tid; i0 < total; i0 += kBatch * nthreads) {
    Vec<T, V> buf[kBatch];
    int off[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      off[b] = -1;
      buf[b] = zero;
      if (i0 + b * nthreads < total) {
        const int gy = sy0 + r;
        const int gx = sx0 + c * V;
        off[b] = r * sw + c * V;
        if (gy >= 0 && gy < in_h && gx >= 0 && gx < in_w) {
          buf[b] = *reinterpret_cast<const Vec<T, V>*>(plane + static_cast<int64_t>(gy) * in_w + gx);
        }
      }
      c += dc;
      r += dr;
      if (c >= vcols) {
        c -= vcols;
        ++r;
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (off[b] >= 0) store_as_float<T, V>(tile + off[b], buf[b]);
    }
  }
}

// The fir kernel's 16-byte vector copy of a tile stored as T (the geometry of fill_tile): each vector goes from
// global to shared memory by cp.async (sm_80+; zero-filled when it lies outside the image, src-size 0 reads
// nothing), all of a thread's copies issued before it waits for them, with no register staging.
template <typename T, int V>
__device__ __forceinline__ void fill_tile_raw(T* tile, int sw, const T* __restrict__ plane, int in_h, int in_w,
                                              int sy0, int sx0, int rows, int cols, int tid, int nthreads) {
  static_assert(sizeof(T) * V == 16, "16-byte vectors");
  const int vcols = cols / V;
  const int total = rows * vcols;
  if (total <= 0) return;
  int r = tid / vcols;
  int c = tid - r * vcols;
  const int dr = nthreads / vcols;
  const int dc = nthreads - dr * vcols;
  for (int i = tid; i < total; i += nthreads) {
    const int gy = sy0 + r;
    const int gx = sx0 + c * V;
    const bool inside = gy >= 0 && gy < in_h && gx >= 0 && gx < in_w;
    const T* src = inside ? plane + static_cast<int64_t>(gy) * in_w + gx : plane;
    T* dst = tile + r * sw + c * V;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned saddr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(src), "r"(inside ? 16 : 0)
                 : "memory");
#else
    Vec<T, V> v;
#pragma unroll
    for (int e = 0; e < V; ++e) v.v[e] = static_cast<T>(0.f);
    if (inside) v = *reinterpret_cast<const Vec<T, V>*>(src);
    *reinterpret_cast<Vec<T, V>*>(dst) = v;
#endif
    c += dc;
    r += dr;
    if (c >= vcols) {
      c -= vcols;
      ++r;
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The fir kernel's scalar (V = 1) copy: rows [sy0, sy0 + rows) x columns [sx0, sx0 + cols) of one plane to tile
// (row stride MC + HC) as float, zeros outside the image; capacity SH rows. Warp w copies the main columns
// [0, MC) of rows w, w + 8, ..., lane l columns l + 32 j; thread i copies one sample of the HC halo columns
// [MC, MC + HC). Every load of the tile is issued before the first shared-memory store (one DRAM round trip per
// tile), and the indices cost a pointer step per row. Zeros also go to filled-capacity cells past rows / cols,
// which no output reads.
template <typename T, int MC, int HC, int SH>
__device__ __forceinline__ void fill_tile_fir(float* tile, const T* __restrict__ plane, int in_h, int in_w,
                                              int sy0, int sx0, int rows, int cols, int tid) {
  constexpr int kSW = MC + HC;
  constexpr int kWarps = kTiledThreads / 32;
  constexpr int kJ = MC / 32;
  constexpr int kI = (SH + kWarps - 1) / kWarps;
  static_assert(MC % 32 == 0 && HC >= 0 && HC * SH <= kTiledThreads, "fir tile geometry");
  const int lane = tid & 31;
  const int w = tid >> 5;
  bool col_ok[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int c = lane + 32 * j;
    const int gx = sx0 + c;
    col_ok[j] = c < cols && gx >= 0 && gx < in_w;
  }
  const T zero = static_cast<T>(0.f);
  const int64_t row_step = static_cast<int64_t>(kWarps) * in_w;
  int64_t off = static_cast<int64_t>(sy0 + w) * in_w + (sx0 + lane);
  T v[kI][kJ];
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    const int r = w + kWarps * i;
    const int gy = sy0 + r;
    const bool row_ok = r < rows && gy >= 0 && gy < in_h;
#pragma unroll
    for (int j = 0; j < kJ; ++j) v[i][j] = (row_ok && col_ok[j]) ? plane[off + 32 * j] : zero;
    off += row_step;
  }
  // Halo sample tid: row tid / HC, column MC + tid % HC.
  const bool has_halo = HC > 0 && tid < HC * SH;
  const int hr = HC > 0 ? tid / (HC > 0 ? HC : 1) : 0;
  const int hc = MC + (tid - hr * HC);
  T h = zero;
  if (has_halo) {
    const int gy = sy0 + hr;
    const int gx = sx0 + hc;
    if (hr < rows && hc < cols && gy >= 0 && gy < in_h && gx >= 0 && gx < in_w) {
      h = plane[static_cast<int64_t>(gy) * in_w + gx];
    }
  }
#pragma unroll
  for (int i = 0; i < kI; ++i) {
    const int r = w + kWarps * i;
    if (kWarps * (i + 1) <= SH || r < SH) {
#pragma unroll
      for (int j = 0; j < kJ; ++j) tile[r * kSW + lane + 32 * j] = static_cast<float>(v[i][j]);
    }
  }
  if (has_halo) tile[hr * kSW + hc] = static_cast<float>(h);
}

// Tile t of the flat (plane, tile row, tile column) index.
struct TileOrigin {
  int64_t plane;
  int ox0, oy0, ow, oh;  // first output and valid extent
};

__device__ __forceinline__ TileOrigin tile_origin(const TileParams& p, int64_t t) {
  const int64_t per_plane = static_cast<int64_t>(p.tiles_x) * p.tiles_y;
  TileOrigin o;
  o.plane = t / per_plane;
  const int64_t rem = t - o.plane * per_plane;
  const int64_t ty = rem / p.tiles_x;
  o.ox0 = static_cast<int>(rem - ty * p.tiles_x) * p.tile_w;
  o.oy0 = static_cast<int>(ty) * p.tile_h;
  o.ow = min(p.tile_w, p.out_w - o.ox0);
  o.oh = min(p.tile_h, p.out_h - o.oy0);
  return o;
}

// General tiled kernel: see the header. Shared memory: the input tile (sw * sh floats, rounded up to 4), the flipped
// taps, and per output row of the tile its first useful tap and the offset of that tap's input row in the tile.
template <typename T, int V>
__global__ void __launch_bounds__(kTiledThreads)
    upfirdn2d_tiled_kernel(const T* __restrict__ x, const float* __restrict__ taps, T* __restrict__ out,
                           const TileParams p) {
  extern __shared__ __align__(16) float smem[];
  float* tile = smem;
  float* s_taps = smem + round_up(p.sw * p.sh, 4);
  int* s_row_tap = reinterpret_cast<int*>(s_taps + p.kh * p.kw);
  int* s_row_off = s_row_tap + p.tile_h;

  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  const int n_taps = p.kh * p.kw;
  for (int i = tid; i < n_taps; i += nthreads) s_taps[i] = taps[n_taps - 1 - i];

  const int64_t n_tiles = p.planes * p.tiles_x * p.tiles_y;
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  for (int64_t t = blockIdx.x; t < n_tiles; t += gridDim.x) {
    const TileOrigin o = tile_origin(p, t);
    const int ix_lo = ceil_div(o.ox0 * p.down_x - p.pad_x0, p.up_x);
    const int ix_hi = floor_div((o.ox0 + o.ow - 1) * p.down_x - p.pad_x0 + p.kw - 1, p.up_x);
    const int iy_lo = ceil_div(o.oy0 * p.down_y - p.pad_y0, p.up_y);
    const int iy_hi = floor_div((o.oy0 + o.oh - 1) * p.down_y - p.pad_y0 + p.kh - 1, p.up_y);
    const int sx0 = V == 1 ? ix_lo : floor_div(ix_lo, V) * V;
    const int cols = round_up(max(0, ix_hi - sx0 + 1), V);
    const int rows = max(0, iy_hi - iy_lo + 1);

    __syncthreads();  // the previous tile is consumed; the taps are written before the first use below
    fill_tile<T, V>(tile, p.sw, x + o.plane * in_plane, p.in_h, p.in_w, iy_lo, sx0, rows, cols, tid, nthreads);
    for (int i = tid; i < o.oh; i += nthreads) {
      const int uy = (o.oy0 + i) * p.down_y - p.pad_y0;
      const int k0 = floor_mod(-uy, p.up_y);
      s_row_tap[i] = k0;
      s_row_off[i] = ((uy + k0) / p.up_y - iy_lo) * p.sw;  // exact division; >= 0 as uy + k0 >= iy_lo * up_y
    }
    __syncthreads();

    if (static_cast<int>(threadIdx.x) < o.ow) {
      const int ox = o.ox0 + threadIdx.x;
      const int ux = ox * p.down_x - p.pad_x0;
      const int kx0 = floor_mod(-ux, p.up_x);
      // Column of tap kx0 in the tile (only dereferenced when kx0 < kw, i.e. a tap exists).
      const float* tcol = tile + ((ux + kx0) / p.up_x - sx0);
      T* dst = out + o.plane * out_plane + ox;
      const int i_end = min(o.oh, static_cast<int>(threadIdx.y + 1) * p.rows_per_thread);
      for (int i = threadIdx.y * p.rows_per_thread; i < i_end; ++i) {
        float acc = 0.f;
        const float* srow = tcol + s_row_off[i];
        for (int ky = s_row_tap[i]; ky < p.kh; ky += p.up_y, srow += p.sw) {
          const float* trow = s_taps + ky * p.kw;
          int j = 0;
          for (int kx = kx0; kx < p.kw; kx += p.up_x, ++j) acc += srow[j] * trow[kx];
        }
        dst[static_cast<int64_t>(o.oy0 + i) * p.out_w] = static_cast<T>(acc);
      }
    }
  }
}

// Register-blocked kernel for up = 1 and a compile-time KH x KW filter and DX, DY factors: blockDim = (BX,
// 256 / BX), each thread the column strip of M consecutive output rows. Output row m of the strip (local row
// m0 + m of the tile) reads tile rows (m0 + m) * DY + ky; walking the strip's rows r = 0 .. (M - 1) * DY + KH - 1
// once, row r feeds every m with ky = r - m * DY in [0, KH), in ascending ky for each m (the order of the other
// kernels). pad and sizes are runtime; p.up_* = 1, p.kh = KH, p.kw = KW.
template <typename T, int V, int KH, int KW, int DX, int DY, int BX, int M>
__global__ void __launch_bounds__(kTiledThreads, 4)
    upfirdn2d_fir_kernel(const T* __restrict__ x, const float* __restrict__ taps, T* __restrict__ out,
                         const TileParams p) {
  constexpr int kStripRows = (M - 1) * DY + KH;
  // V = 1: the tile is the exact window, (BX - 1) * DX + KW columns (a compile-time stride) by kTileRows rows.
  constexpr int kMainCols = BX * DX;
  constexpr int kHaloCols = KW - DX;
  constexpr int kTileRows = ((kTiledThreads / BX) * M - 1) * DY + KH;
  static_assert(KW >= DX, "fir tile geometry");
  const int sw = V == 1 ? kMainCols + kHaloCols : p.sw;
  extern __shared__ __align__(16) float smem[];
  // The tile's element: T for 16-byte vectors of a type of at most 4 bytes (fill_tile_raw), float otherwise.
  constexpr bool kRaw = V > 1 && sizeof(T) <= 4;
  using S = std::conditional_t<kRaw, T, float>;
  S* tile = reinterpret_cast<S*>(smem);

  float t[KH][KW];  // flipped taps
#pragma unroll
  for (int ky = 0; ky < KH; ++ky) {
#pragma unroll
    for (int kx = 0; kx < KW; ++kx) t[ky][kx] = __ldg(taps + (KH * KW - 1 - (ky * KW + kx)));
  }

  const int tid = threadIdx.y * BX + threadIdx.x;
  const int64_t n_tiles = p.planes * p.tiles_x * p.tiles_y;
  const int64_t in_plane = static_cast<int64_t>(p.in_h) * p.in_w;
  const int64_t out_plane = static_cast<int64_t>(p.out_h) * p.out_w;
  for (int64_t tt = blockIdx.x; tt < n_tiles; tt += gridDim.x) {
    const TileOrigin o = tile_origin(p, tt);
    const int ix_lo = o.ox0 * DX - p.pad_x0;
    const int ix_hi = (o.ox0 + o.ow - 1) * DX - p.pad_x0 + KW - 1;
    const int iy_lo = o.oy0 * DY - p.pad_y0;
    const int rows = (o.oh - 1) * DY + KH;
    const int sx0 = V == 1 ? ix_lo : floor_div(ix_lo, V) * V;
    const int cols = round_up(ix_hi - sx0 + 1, V);

    __syncthreads();  // the previous tile is consumed
    if constexpr (V == 1) {
      fill_tile_fir<T, kMainCols, kHaloCols, kTileRows>(smem, x + o.plane * in_plane, p.in_h, p.in_w, iy_lo, sx0,
                                                        rows, cols, tid);
    } else if constexpr (kRaw) {
      fill_tile_raw<T, V>(tile, sw, x + o.plane * in_plane, p.in_h, p.in_w, iy_lo, sx0, rows, cols, tid,
                          kTiledThreads);
    } else {
      fill_tile<T, V>(smem, sw, x + o.plane * in_plane, p.in_h, p.in_w, iy_lo, sx0, rows, cols, tid,
                      kTiledThreads);
    }
    __syncthreads();

    const int m0 = threadIdx.y * M;
    const int n_out = min(M, o.oh - m0);
    if (static_cast<int>(threadIdx.x) < o.ow && n_out > 0) {
      const S* src = tile + m0 * DY * sw + threadIdx.x * DX + (ix_lo - sx0);
      // Filled rows of this strip; later ones feed only outputs not written. V = 1 fills (zeros) the whole
      // capacity, which the strip never passes, so no row needs the test there.
      const int avail = V == 1 ? kStripRows : rows - m0 * DY;
      float acc[M];
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m] = 0.f;
#pragma unroll
      for (int r = 0; r < kStripRows; ++r) {
        float v[KW];
        if (r < avail) {
#pragma unroll
          for (int kx = 0; kx < KW; ++kx) v[kx] = static_cast<float>(src[r * sw + kx]);
        } else {
#pragma unroll
          for (int kx = 0; kx < KW; ++kx) v[kx] = 0.f;
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
          const int ky = r - m * DY;
          if (ky >= 0 && ky < KH) {
#pragma unroll
            for (int kx = 0; kx < KW; ++kx) acc[m] += v[kx] * t[ky][kx];
          }
        }
      }
      T* dst = out + o.plane * out_plane + static_cast<int64_t>(o.oy0 + m0) * p.out_w + o.ox0 + threadIdx.x;
#pragma unroll
      for (int m = 0; m < M; ++m, dst += p.out_w) {
        if (m < n_out) *dst = static_cast<T>(acc[m]);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------ launch

// Shared tile capacity for tile_w x tile_h outputs (see the header).
int tile_stride(int tile_w, int down_x, int kw, int up_x, int vec) {
  const int base = ((tile_w - 1) * down_x + kw - 1) / up_x + 1;
  return round_up(base + vec - 1, vec);
}
int tile_rows(int tile_h, int down_y, int kh, int up_y) { return ((tile_h - 1) * down_y + kh - 1) / up_y + 1; }

void finish_params(TileParams& p, int tile_w, int tile_h, int rows_per_thread, int sw, int sh) {
  p.tile_w = tile_w;
  p.tile_h = tile_h;
  p.rows_per_thread = rows_per_thread;
  p.sw = sw;
  p.sh = sh;
  p.tiles_x = (p.out_w + tile_w - 1) / tile_w;
  p.tiles_y = (p.out_h + tile_h - 1) / tile_h;
}

unsigned tiled_grid(const TileParams& p) {
  return static_cast<unsigned>(std::min<int64_t>(p.planes * p.tiles_x * p.tiles_y, kMaxGrid));
}

template <typename T, int V, int D, int BX, int M>
void launch_fir(const T* x, const float* taps, T* out, TileParams p, cudaStream_t stream) {
  constexpr int BY = kTiledThreads / BX;
  const int sw = tile_stride(BX, D, 4, 1, V);
  const int sh = tile_rows(BY * M, D, 4, 1);
  finish_params(p, BX, BY * M, M, sw, sh);
  const size_t elem = V > 1 && sizeof(T) <= 4 ? sizeof(T) : sizeof(float);  // the kernel's kRaw
  const size_t smem = static_cast<size_t>(sw) * sh * elem;
  TORCH_INTERNAL_ASSERT(smem <= kSmemBudget);
  TORCH_INTERNAL_ASSERT(V != 1 || (sw == BX * D + 4 - D && sh == (BY * M - 1) * D + 4));  // the kernel's constants
  upfirdn2d_fir_kernel<T, V, 4, 4, D, D, BX, M><<<tiled_grid(p), dim3(BX, BY), smem, stream>>>(x, taps, out, p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// false when the general tiled kernel does not apply (filter too large, tile too large for shared memory).
template <typename T, int V>
bool launch_tiled(const T* x, const float* taps, T* out, TileParams p, cudaStream_t stream) {
  if (p.kh <= 0 || p.kw <= 0 || p.kh > kMaxTiledTaps || p.kw > kMaxTiledTaps) return false;
  // Wide tiles (fewer halo columns) when the output is wide and not decimated along x.
  for (int bx = (p.down_x == 1 && p.out_w > 32) ? 64 : 32; bx >= 32; bx /= 2) {
    const int by = kTiledThreads / bx;
    int m = 8;
    while (m > 1 && by * (m / 2) >= p.out_h) m /= 2;  // no taller tiles than the output needs
    for (; m >= 1; m /= 2) {
      const int th = by * m;
      const int sw = tile_stride(bx, p.down_x, p.kw, p.up_x, V);
      const int sh = tile_rows(th, p.down_y, p.kh, p.up_y);
      const size_t smem = (static_cast<size_t>(round_up(sw * sh, 4)) + p.kh * p.kw + 2 * th) * sizeof(float);
      if (smem > kSmemBudget) continue;
      finish_params(p, bx, th, m, sw, sh);
      upfirdn2d_tiled_kernel<T, V><<<tiled_grid(p), dim3(bx, by), smem, stream>>>(x, taps, out, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return true;
    }
  }
  return false;
}

template <typename T, int V>
bool launch_tiled_any(const T* x, const float* taps, T* out, const TileParams& p, cudaStream_t stream) {
  const bool fir = p.up_x == 1 && p.up_y == 1 && p.kh == 4 && p.kw == 4 && p.down_x == p.down_y &&
                   (p.down_x == 1 || p.down_x == 2);
  if (fir && p.down_x == 1) {
    launch_fir<T, V, 1, 64, 16>(x, taps, out, p, stream);
    return true;
  }
  if (fir) {
    // Scalar loads: fill_tile_fir's halo takes one sample per thread, so at most 256 / 2 tile rows.
    launch_fir<T, V, 2, 32, V == 1 ? 4 : 8>(x, taps, out, p, stream);
    return true;
  }
  return launch_tiled<T, V>(x, taps, out, p, stream);
}

template <typename T>
void launch_upfirdn2d(const at::Tensor& x, const at::Tensor& kernel, at::Tensor& out, const TileParams& p,
                      cudaStream_t stream) {
  const T* xp = x.data_ptr<T>();
  const float* taps = kernel.data_ptr<float>();
  T* op = out.data_ptr<T>();
  constexpr int kVec = static_cast<int>(16 / sizeof(T));
  const bool vec = p.in_w % kVec == 0 && reinterpret_cast<uintptr_t>(xp) % 16 == 0;
  const bool done = vec ? launch_tiled_any<T, kVec>(xp, taps, op, p, stream)
                        : launch_tiled_any<T, 1>(xp, taps, op, p, stream);
  if (done) return;

  TORCH_CHECK((p.out_h + kBlockY - 1) / kBlockY <= kMaxGridYZ, "upfirdn2d: output height ", p.out_h, " too large");
  const dim3 block(kBlockX, kBlockY);
  const dim3 grid(static_cast<unsigned>((p.out_w + kBlockX - 1) / kBlockX),
                  static_cast<unsigned>((p.out_h + kBlockY - 1) / kBlockY),
                  static_cast<unsigned>(std::min(p.planes, kMaxGridYZ)));
  const size_t smem = static_cast<size_t>(p.kh * p.kw) * sizeof(float);
  upfirdn2d_kernel<T><<<grid, block, smem, stream>>>(xp, taps, op, p.planes, p.in_h, p.in_w, p.out_h, p.out_w,
                                                     p.kh, p.kw, p.up_x, p.up_y, p.down_x, p.down_y, p.pad_x0,
                                                     p.pad_y0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

  auto out = at::empty({n, c, out_h, out_w}, x.options());
  const int64_t planes = n * c;
  if (planes == 0) return out;

  TileParams p{};
  p.planes = planes;
  p.in_h = static_cast<int>(in_h);
  p.in_w = static_cast<int>(in_w);
  p.out_h = static_cast<int>(out_h);
  p.out_w = static_cast<int>(out_w);
  p.kh = static_cast<int>(kh);
  p.kw = static_cast<int>(kw);
  p.up_x = static_cast<int>(up_x);
  p.up_y = static_cast<int>(up_y);
  p.down_x = static_cast<int>(down_x);
  p.down_y = static_cast<int>(down_y);
  p.pad_x0 = static_cast<int>(pad_x0);
  p.pad_y0 = static_cast<int>(pad_y0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "upfirdn2d_cuda",
                                  [&] { launch_upfirdn2d<scalar_t>(x, kernel, out, p, stream); });
  return out;
}
