// Readout: out[p] = sum_j weights[p, j] * memory[indices[p, j]] (index -1: empty slot, skipped).
// One warp per query row; lanes stride over the channels (32 consecutive channels per load, so
// each gathered memory row is read in coalesced segments). Memory-bound: it reads k rows of C
// values per query and nothing else.
//
// Compile-time parameter (-D): VALUE_TYPE, the memory's dtype (0 = fp16, 1 = bf16, 2 = fp32).
// Accumulation is fp32; the output is fp32.
#include "common.cuh"

#ifndef VALUE_TYPE
#define VALUE_TYPE 0
#endif

#if VALUE_TYPE == 2
typedef float mevos_value;
__device__ __forceinline__ float load_value(mevos_value x) { return x; }
#elif VALUE_TYPE == 1
typedef mevos_u16 mevos_value;
__device__ __forceinline__ float load_value(mevos_value x) { return mevos_bf16_to_f32(x); }
#elif VALUE_TYPE == 0
typedef mevos_u16 mevos_value;
__device__ __forceinline__ float load_value(mevos_value x) { return mevos_f16_to_f32(x); }
#else
#error "VALUE_TYPE must be 0 (fp16), 1 (bf16) or 2 (fp32)"
#endif

constexpr int READOUT_WARPS = 4;
constexpr int RV = 4;  // channels per lane per pass: a pass covers 128 channels

// weights, indices: P x k; memory: M x C; out: P x C. A row with an index outside [-1, M) is
// not read at all: its output is NaN and *bad_index is set to 1 (the caller raises).
extern "C" __global__ void __launch_bounds__(READOUT_WARPS * 32)
mevos_readout(const float* __restrict__ weights, const long long* __restrict__ indices,
              const mevos_value* __restrict__ memory, float* __restrict__ out, int* __restrict__ bad_index, int P,
              int k, long long M, int C) {
    const int lane = threadIdx.x & 31;
    const int p = blockIdx.x * READOUT_WARPS + (threadIdx.x >> 5);
    if (p >= P) return;  // the whole warp leaves together
    const float* wrow = weights + (size_t)p * k;
    const long long* irow = indices + (size_t)p * k;
    float* orow = out + (size_t)p * C;

    bool bad = false;
    for (int j = lane; j < k; j += 32) {
        const long long m = irow[j];
        bad |= m < -1 || m >= M;
    }
    if (__any_sync(MEVOS_FULL_MASK, bad)) {
        for (int c = lane; c < C; c += 32) orow[c] = __int_as_float(0x7fc00000);
        if (lane == 0) atomicOr(bad_index, 1);
        return;
    }

    for (int c0 = 0; c0 < C; c0 += 32 * RV) {
        float acc[RV];
#pragma unroll
        for (int v = 0; v < RV; ++v) acc[v] = 0.f;
        for (int j = 0; j < k; ++j) {
            const long long m = irow[j];  // one address for the whole warp: a broadcast load
            if (m < 0) continue;          // warp-uniform
            const float wj = wrow[j];
            const mevos_value* row = memory + (size_t)m * C;
#pragma unroll
            for (int v = 0; v < RV; ++v) {
                const int c = c0 + v * 32 + lane;
                if (c < C) acc[v] = fmaf(wj, load_value(row[c]), acc[v]);
            }
        }
#pragma unroll
        for (int v = 0; v < RV; ++v) {
            const int c = c0 + v * 32 + lane;
            if (c < C) orow[c] = acc[v];
        }
    }
}
