// Fused top-k affinity over the memory: similarity on tensor cores, streaming per-query top-k,
// softmax with temperature. The P x T*P score matrix is never written anywhere: each 16 x BN
// block of scores lives in registers and a 16 x BN shared-memory scratch, and only the k best
// (score, index) pairs per query leave the kernel.
//
// Two kernels, launched back to back on one stream (see fused.py):
//   mevos_topk_partial  grid (query blocks, splits): each CTA searches 1/splits of the memory
//                       tiles for 64 queries and writes their partial top-k lists.
//   mevos_topk_merge    one warp per query: merges the splits' lists, applies the temperature
//                       and the softmax, writes weights (float) and indices (int64).
//
// Compile-time parameters (-D): KEY_DIM (C, a multiple of 16 in [16, 256]) and KEY_TYPE
// (0 = fp16, 1 = bf16: one mma.m16n8k16 per 16 channels; 2 = fp32: 3xTF32, i.e. each operand
// split into a TF32 high part and a TF32 remainder, three mma.m16n8k8 per 8 channels, which keeps
// about 21 mantissa bits: the fp32 reference's ranking and weights to ~1e-6).
//
// Geometry. Query block: 4 grid rows x 16 grid columns, one warp per grid row, so a warp's 16
// queries are the 16 rows of one mma tile (row i = cell (qy, qx0 + i)). Memory tile: BN cells of
// one frame, TILE_H grid rows x 16 grid columns. Tiles are 2-D so the locality radius can skip
// them by comparing rectangles; cells outside the grid (the right and bottom edges) are
// zero-filled in shared memory and masked out of the top-k.
#include "common.cuh"

#ifndef KEY_DIM
#define KEY_DIM 128
#endif
#ifndef KEY_TYPE
#define KEY_TYPE 0
#endif

#if KEY_DIM % 16 != 0 || KEY_DIM < 16 || KEY_DIM > 256
#error "KEY_DIM must be a multiple of 16 in [16, 256]"
#endif
#if KEY_TYPE < 0 || KEY_TYPE > 2
#error "KEY_TYPE must be 0 (fp16), 1 (bf16) or 2 (fp32)"
#endif

#if KEY_TYPE == 2
typedef float mevos_key;
constexpr int KPAD = 4;  // row stride = C + 4 words: B-fragment loads hit 32 distinct banks
#else
typedef mevos_u16 mevos_key;
constexpr int KPAD = 8;  // row stride = C/2 + 4 words: B-fragment loads hit 32 distinct banks
#endif

constexpr int C = KEY_DIM;
constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;
constexpr int QW = 16;      // query block width in cells = M of the mma tile
constexpr int TILE_W = 16;  // memory tile width in cells
constexpr int ROW_ELEMS = C + KPAD;
constexpr int ROW_BYTES = ROW_ELEMS * (int)sizeof(mevos_key);
// Everything must fit the 48 KB of static shared memory (no opt-in attribute needed): the key
// tile gets at most 24 KB, so BN shrinks for wide or fp32 keys.
constexpr int TILE_BYTES_MAX = 24 * 1024;
constexpr int BN = (64 * ROW_BYTES <= TILE_BYTES_MAX) ? 64 : (32 * ROW_BYTES <= TILE_BYTES_MAX ? 32 : 16);
constexpr int TILE_H = BN / TILE_W;
constexpr int NT = BN / 8;                            // n8 mma tiles per warp
constexpr int SSTRIDE = ((BN + 31) / 32) * 32 + 8;    // == 8 mod 32: float2 stores conflict-free
constexpr int CHUNKS_PER_ROW = C * (int)sizeof(mevos_key) / 16;  // 16-byte cp.async chunks
static_assert(BN % 16 == 0 && BN <= 64, "BN");
static_assert((C * (int)sizeof(mevos_key)) % 16 == 0, "rows must be whole 16-byte chunks");

// ---- tensor-core primitives -------------------------------------------------------------

#if KEY_TYPE == 2
constexpr int KSTEP = 8;
typedef float afrag_t;

__device__ __forceinline__ mevos_u32 to_tf32(float x) {
    mevos_u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void mma_tf32(float (&d)[4], const mevos_u32 (&a)[4], mevos_u32 b0, mevos_u32 b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#else
constexpr int KSTEP = 16;
typedef mevos_u32 afrag_t;

__device__ __forceinline__ void mma_16816(float (&d)[4], const mevos_u32 (&a)[4], mevos_u32 b0, mevos_u32 b1) {
#if KEY_TYPE == 1
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
#endif
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif
constexpr int KSTEPS = C / KSTEP;

// Query fragments, loaded once from global memory and kept in registers for the whole search.
// Fragment layout (PTX ISA, g = lane / 4, t = lane % 4), row r = query cell (qy, qx0 + r):
//   fp16/bf16 m16n8k16: a[0] = rows g, cols 2t..2t+1; a[1] = row g+8, same cols; a[2], a[3] the
//                       same rows at cols +8 (two 16-bit values per register, low col first).
//   tf32 m16n8k8:       a[0] = (g, t), a[1] = (g+8, t), a[2] = (g, t+4), a[3] = (g+8, t+4).
// Rows outside the grid read nothing and hold zeros.
__device__ __forceinline__ void load_query(afrag_t (&a)[KSTEPS][4], const mevos_key* __restrict__ query,
                                           int p_lo, bool v_lo, int p_hi, bool v_hi, int g, int t) {
    const mevos_key* q_lo = query + (size_t)(v_lo ? p_lo : 0) * C;
    const mevos_key* q_hi = query + (size_t)(v_hi ? p_hi : 0) * C;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#if KEY_TYPE == 2
        const int c = ks * KSTEP + t;
        a[ks][0] = v_lo ? q_lo[c] : 0.f;
        a[ks][1] = v_hi ? q_hi[c] : 0.f;
        a[ks][2] = v_lo ? q_lo[c + 4] : 0.f;
        a[ks][3] = v_hi ? q_hi[c + 4] : 0.f;
#else
        const int c = ks * KSTEP + 2 * t;
        a[ks][0] = v_lo ? *reinterpret_cast<const mevos_u32*>(q_lo + c) : 0u;
        a[ks][1] = v_hi ? *reinterpret_cast<const mevos_u32*>(q_hi + c) : 0u;
        a[ks][2] = v_lo ? *reinterpret_cast<const mevos_u32*>(q_lo + c + 8) : 0u;
        a[ks][3] = v_hi ? *reinterpret_cast<const mevos_u32*>(q_hi + c + 8) : 0u;
#endif
    }
}

// acc[nt] = raw dot products of the warp's 16 queries with tile cells nt*8 .. nt*8+7.
// B fragment (memory cell n = nt*8 + g, channels along k), from the shared tile [BN][ROW_ELEMS]:
//   fp16/bf16: b0 = channels 2t..2t+1, b1 = channels 2t+8..2t+9;  tf32: b0 = t, b1 = t+4.
// Accumulator layout: acc[nt][0..1] = row g, cells nt*8 + 2t + {0,1}; acc[nt][2..3] = row g+8.
__device__ __forceinline__ void tile_scores(float (&acc)[NT][4], const afrag_t (&a)[KSTEPS][4],
                                            const mevos_key* tile, int g, int t) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
#if KEY_TYPE == 2
        // 3xTF32: x = hi + lo with hi = tf32(x), lo = tf32(x - hi) (x - hi is exact in fp32).
        // a.b ~= a_lo.b_hi + a_hi.b_lo + a_hi.b_hi; the dropped a_lo.b_lo is ~2^-22 relative.
        mevos_u32 a_hi[4], a_lo[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            a_hi[i] = to_tf32(a[ks][i]);
            a_lo[i] = to_tf32(a[ks][i] - __uint_as_float(a_hi[i]));
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const float* b = tile + (nt * 8 + g) * ROW_ELEMS + ks * KSTEP + t;
            const float x0 = b[0], x1 = b[4];
            const mevos_u32 h0 = to_tf32(x0), h1 = to_tf32(x1);
            const mevos_u32 l0 = to_tf32(x0 - __uint_as_float(h0)), l1 = to_tf32(x1 - __uint_as_float(h1));
            mma_tf32(acc[nt], a_lo, h0, h1);
            mma_tf32(acc[nt], a_hi, l0, l1);
            mma_tf32(acc[nt], a_hi, h0, h1);
        }
#else
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const mevos_key* b = tile + (nt * 8 + g) * ROW_ELEMS + ks * KSTEP + 2 * t;
            mma_16816(acc[nt], a[ks], *reinterpret_cast<const mevos_u32*>(b), *reinterpret_cast<const mevos_u32*>(b + 8));
        }
#endif
    }
}

// ---- memory tiles -----------------------------------------------------------------------

// Pinned-frame flags travel as a kernel argument (a 128-bit mask: no device buffer to upload,
// so no host synchronisation per call); fused.py refuses T > MAX_FLAGGED_FRAMES with a radius.
struct PinnedMask {
    unsigned long long lo, hi;
};

__device__ __forceinline__ bool frame_pinned(const PinnedMask& pm, int f) {
    return f < 64 ? ((pm.lo >> f) & 1ull) : f < 128 ? ((pm.hi >> (f - 64)) & 1ull) : true;
}

// The tiles a CTA searches, computed once per CTA from its query rectangle: every tile of a
// pinned frame (or of any frame without a radius), and for the other frames only the window of
// tiles that comes within `radius` cells of the query rectangle in y and x (the same window in
// every such frame). Candidate tiles are numbered frame by frame; split s takes the numbers
// s, s + splits, ... and walks them forward, so no thread ever scans a tile it skips.
struct TileWalk {
    int tiles_x, tiles_per_frame;
    int win_ty0, win_tx0, win_ny, win_nx;  // the radius window, in tiles (win_ny * win_nx may be 0)
    PinnedMask pinned;
    bool limited;  // a radius is set
    int T;
    // Position: candidate number j lies in frame f, whose candidates start at number `start`.
    int f;
    long long start;

    __device__ int count(int frame) const {
        return (!limited || frame_pinned(pinned, frame)) ? tiles_per_frame : win_ny * win_nx;
    }

    // Frame and tile origin of candidate number j (j never decreases between calls); false when
    // j is past the last candidate.
    __device__ bool locate(long long j, int& frame, int& y0, int& x0) {
        while (f < T && j >= start + count(f)) {
            start += count(f);
            ++f;
        }
        if (f >= T) return false;
        const int i = (int)(j - start);
        int ty, tx;
        if (!limited || frame_pinned(pinned, f)) {
            ty = i / tiles_x;
            tx = i % tiles_x;
        } else {
            ty = win_ty0 + i / win_nx;
            tx = win_tx0 + i % win_nx;
        }
        frame = f;
        y0 = ty * TILE_H;
        x0 = tx * TILE_W;
        return true;
    }
};

__device__ __forceinline__ TileWalk tile_walk(int h, int w, int T, PinnedMask pinned, int radius, int qy_first,
                                              int qy_last, int qx_first, int qx_last) {
    TileWalk tw;
    tw.tiles_x = (w + TILE_W - 1) / TILE_W;
    const int tiles_y = (h + TILE_H - 1) / TILE_H;
    tw.tiles_per_frame = tw.tiles_x * tiles_y;
    tw.limited = radius >= 0;
    tw.pinned = pinned;
    tw.T = T;
    tw.f = 0;
    tw.start = 0;
    if (tw.limited) {
        const int y_lo = max(0, qy_first - radius), y_hi = min(h - 1, qy_last + radius);
        const int x_lo = max(0, qx_first - radius), x_hi = min(w - 1, qx_last + radius);
        tw.win_ty0 = y_lo / TILE_H;
        tw.win_tx0 = x_lo / TILE_W;
        tw.win_ny = y_hi / TILE_H - tw.win_ty0 + 1;
        tw.win_nx = x_hi / TILE_W - tw.win_tx0 + 1;
    } else {
        tw.win_ty0 = tw.win_tx0 = 0;
        tw.win_ny = tiles_y;
        tw.win_nx = tw.tiles_x;
    }
    return tw;
}

// Asynchronous copy of one memory tile into shared memory; cells outside the grid read nothing
// and are zero-filled.
__device__ __forceinline__ void load_tile(mevos_key* tile, const mevos_key* __restrict__ memory, int f, int y0,
                                          int x0, int h, int w) {
    const size_t P = (size_t)h * w;
    for (int c = threadIdx.x; c < BN * CHUNKS_PER_ROW; c += THREADS) {
        const int n = c / CHUNKS_PER_ROW, part = c % CHUNKS_PER_ROW;
        const int y = y0 + n / TILE_W, x = x0 + n % TILE_W;
        const bool inside = y < h && x < w;
        const char* src = reinterpret_cast<const char*>(memory);
        if (inside) src += ((size_t)f * P + (size_t)y * w + x) * (C * sizeof(mevos_key)) + part * 16;
        mevos_cp_async16(mevos_smem_addr(tile + n * ROW_ELEMS) + part * 16, src, inside ? 16 : 0);
    }
}

// ---- kernels ----------------------------------------------------------------------------

// query: P x C, memory: T x P x C (both row-major, 16-byte aligned), pinned: bit f = frame f is
// searched in full (frames past 128 are treated as pinned), radius < 0: none. Writes part_score / part_index [splits][P][k]: the split's k best
// raw dot products per query, best first, index -1 for empty slots. Sets *nonfinite to 1 when
// any computed score is NaN or inf.
extern "C" __global__ void __launch_bounds__(THREADS)
mevos_topk_partial(const mevos_key* __restrict__ query, const mevos_key* __restrict__ memory,
                   unsigned long long pinned_lo, unsigned long long pinned_hi, float* __restrict__ part_score,
                   int* __restrict__ part_index, int* __restrict__ nonfinite, int h, int w, int T, int k,
                   int radius) {
    __shared__ __align__(16) mevos_key tile[BN * ROW_ELEMS];
    __shared__ __align__(16) float scratch[WARPS][16 * SSTRIDE];
    __shared__ float thresh[WARPS][16];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int P = h * w;
    const int nqx = (w + QW - 1) / QW;
    const int qx0 = (blockIdx.x % nqx) * QW;
    const int qy0 = (blockIdx.x / nqx) * WARPS;
    const int qy = qy0 + warp;  // this warp's grid row
    const int split = blockIdx.y, splits = gridDim.y;

    // Bit r: row r of this warp is a real query cell (qx0 < w always holds, so 1 <= n <= 16).
    unsigned row_valid = 0u;
    if (qy < h) row_valid = (1u << min(QW, w - qx0)) - 1u;

    afrag_t a[KSTEPS][4];
    load_query(a, query, qy * w + qx0 + g, (row_valid >> g) & 1u, qy * w + qx0 + g + 8, (row_valid >> (g + 8)) & 1u, g, t);

    // One top-k list per query row, row r in (ls[r], li[r]) across the warp's lanes; r is a
    // compile-time index everywhere below (fully unrolled loops), so the lists stay in registers.
    float ls[16];
    int li[16];
#pragma unroll
    for (int r = 0; r < 16; ++r) {
        ls[r] = mevos_neg_inf();
        li[r] = MEVOS_EMPTY_INDEX;
    }
    // thresh[warp][r]: the score of row r's k-th entry, for the cheap register-level prefilter.
    if (lane < 16) thresh[warp][lane] = mevos_neg_inf();
    __syncwarp();

    const PinnedMask pinned = {pinned_lo, pinned_hi};
    TileWalk walk = tile_walk(h, w, T, pinned, radius, qy0, min(qy0 + WARPS, h) - 1, qx0, min(qx0 + QW, w) - 1);
    bool bad = false;

    // Splits take the candidate tiles round-robin (split, split + splits, ...), which balances
    // pinned frames (searched in full) against radius-limited ones across CTAs. One tile buffer:
    // the next tile's copy is issued once every warp has finished its mma on the current one and
    // runs while the warps update their top-k lists.
    long long cur = split;
    int f, y0, x0;
    bool have = walk.locate(cur, f, y0, x0);
    if (have) {
        load_tile(tile, memory, f, y0, x0, h, w);
        mevos_cp_async_commit();
    }
    while (have) {  // uniform across the CTA: every thread computes the same sequence
        mevos_cp_async_wait_all();
        __syncthreads();  // the tile is complete and visible to every warp

        float acc[NT][4];
        tile_scores(acc, a, tile, g, t);

        __syncthreads();  // every warp is done reading the tile
        int nf = 0, ny0 = 0, nx0 = 0;
        const bool next = walk.locate(cur + splits, nf, ny0, nx0);
        if (next) {
            load_tile(tile, memory, nf, ny0, nx0, h, w);
            mevos_cp_async_commit();
        }

        // Prefilter in registers: a row needs the slow path only if one of its candidate scores
        // (a cell inside the grid and, in a radius-limited frame, inside the row's window) reaches
        // its k-th best so far (>=, so that an equal score with a lower index is not missed).
        // Rows g and g+8 are in lanes 4g..4g+3 (see the accumulator layout).
        const bool local = radius >= 0 && !frame_pinned(pinned, f);
        const float th_lo = thresh[warp][g], th_hi = thresh[warp][g + 8];
        const int qx_lo = qx0 + g, qx_hi = qx0 + g + 8;
        bool f_lo = false, f_hi = false;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int n = nt * 8 + 2 * t + e;
                const int y = y0 + n / TILE_W, x = x0 + n % TILE_W;
                const bool in_grid = y < h && x < w;
                const bool in_rows = !local || abs(y - qy) <= radius;
                const bool ok_lo = in_grid && in_rows && (!local || abs(x - qx_lo) <= radius);
                const bool ok_hi = in_grid && in_rows && (!local || abs(x - qx_hi) <= radius);
                f_lo |= ok_lo && acc[nt][e] >= th_lo;
                f_hi |= ok_hi && acc[nt][2 + e] >= th_hi;
            }
            bad |= !(mevos_finite(acc[nt][0]) && mevos_finite(acc[nt][1]) && mevos_finite(acc[nt][2]) &&
                     mevos_finite(acc[nt][3]));
        }
        const unsigned b_lo = __ballot_sync(MEVOS_FULL_MASK, f_lo), b_hi = __ballot_sync(MEVOS_FULL_MASK, f_hi);
        unsigned rows = 0u;
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            if ((b_lo >> (4 * r)) & 0xFu) rows |= 1u << r;
            if ((b_hi >> (4 * r)) & 0xFu) rows |= 1u << (r + 8);
        }
        rows &= row_valid;

        if (rows) {  // warp-uniform (built from ballots)
            float* sw = scratch[warp];
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                *reinterpret_cast<float2*>(sw + g * SSTRIDE + nt * 8 + 2 * t) = make_float2(acc[nt][0], acc[nt][1]);
                *reinterpret_cast<float2*>(sw + (g + 8) * SSTRIDE + nt * 8 + 2 * t) = make_float2(acc[nt][2], acc[nt][3]);
            }
            __syncwarp();
#pragma unroll
            for (int r = 0; r < 16; ++r) {
                if (rows & (1u << r)) {
                    const int qx = qx0 + r;
#pragma unroll
                    for (int j = 0; j < BN; j += 32) {
                        const int n = j + lane;  // tile cell of this lane
                        const int y = y0 + n / TILE_W, x = x0 + n % TILE_W;
                        bool valid = n < BN && y < h && x < w;
                        if (local) valid = valid && abs(y - qy) <= radius && abs(x - qx) <= radius;
                        const float s = n < BN ? sw[r * SSTRIDE + n] : mevos_neg_inf();
                        const int m = valid ? f * P + y * w + x : MEVOS_EMPTY_INDEX;
                        mevos_offer_lanes(ls[r], li[r], s, m, valid, k, lane);
                    }
                    const float kth = __shfl_sync(MEVOS_FULL_MASK, ls[r], k - 1);
                    if (lane == 0) thresh[warp][r] = kth;
                }
            }
            __syncwarp();  // thresholds written, scratch free for the next tile
        }
        cur += splits;
        have = next;
        f = nf;
        y0 = ny0;
        x0 = nx0;
    }

#pragma unroll
    for (int r = 0; r < 16; ++r) {
        if (((row_valid >> r) & 1u) && lane < k) {
            const size_t o = ((size_t)split * P + (size_t)(qy * w + qx0 + r)) * k + lane;
            part_score[o] = ls[r];
            part_index[o] = li[r] == MEVOS_EMPTY_INDEX ? -1 : li[r];
        }
    }
    if (__any_sync(MEVOS_FULL_MASK, bad) && lane == 0) atomicOr(nonfinite, 1);
}

// One warp per query: the top-k of the splits' lists (disjoint candidate sets), then
// weights = softmax(score / temperature) over the kept slots. Empty slots: weight 0, index -1.
// Launch with a multiple of 32 threads per block.
extern "C" __global__ void __launch_bounds__(128)
mevos_topk_merge(const float* __restrict__ part_score, const int* __restrict__ part_index,
                 float* __restrict__ weights, long long* __restrict__ indices, int* __restrict__ nonfinite, int P,
                 int splits, int k, float temperature) {
    const int lane = threadIdx.x & 31;
    const int p = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (p >= P) return;  // the whole warp leaves together

    float ls = mevos_neg_inf();
    int li = MEVOS_EMPTY_INDEX;
    const int n = splits * k;
    for (int base = 0; base < n; base += 32) {
        const int c = base + lane;
        float s = mevos_neg_inf();
        int m = MEVOS_EMPTY_INDEX;
        if (c < n) {
            const int sp = c / k, j = c - sp * k;
            const size_t o = ((size_t)sp * P + p) * k + j;
            const int idx = part_index[o];
            if (idx >= 0) {
                m = idx;
                s = part_score[o];
            }
        }
        mevos_offer_lanes(ls, li, s, m, m != MEVOS_EMPTY_INDEX, k, lane);
    }

    const bool have = lane < k && li != MEVOS_EMPTY_INDEX;
    const float z = have ? ls / temperature : 0.f;
    const float top = __shfl_sync(MEVOS_FULL_MASK, z, 0);  // lane 0 holds the best score
    const float e = have ? expf(z - top) : 0.f;
    const float sum = mevos_warp_sum(e);
    if (lane < k) {
        weights[(size_t)p * k + lane] = have ? e / sum : 0.f;
        indices[(size_t)p * k + lane] = have ? (long long)li : -1LL;
    }
    if (__any_sync(MEVOS_FULL_MASK, have && !mevos_finite(z)) && lane == 0) atomicOr(nonfinite, 1);
}
