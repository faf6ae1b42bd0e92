// Shared device helpers of the mevos kernels: warp-level top-k lists and small PTX wrappers.
//
// Self-contained on purpose: NVRTC compiles it without the CUDA toolkit's headers (no
// cuda_fp16.h, no mma.h), so everything below is builtins or inline PTX.
#pragma once

#define MEVOS_FULL_MASK 0xffffffffu
#define MEVOS_EMPTY_INDEX 0x7fffffff  // an empty top-k slot; ranks after every real candidate

typedef unsigned short mevos_u16;
typedef unsigned int mevos_u32;

__device__ __forceinline__ float mevos_neg_inf() { return __int_as_float(0xff800000); }

// NaN fails both comparisons, +-inf fails the second.
__device__ __forceinline__ bool mevos_finite(float x) { return fabsf(x) <= 3.402823466e38f; }

// The total order of the selection contract: higher score first, lower memory index on ties.
__device__ __forceinline__ bool mevos_ranks_before(float s1, int i1, float s2, int i2) {
    return s1 > s2 || (s1 == s2 && i1 < i2);
}

// A warp holds one query's top-k list: lane j < k holds the j-th best (score, index); slots
// not filled yet hold (-inf, MEVOS_EMPTY_INDEX). Invariant: lanes 0..k-1 are sorted by
// mevos_ranks_before, empty slots last, and the list is the top-min(k, n) of the n candidates
// offered so far. Lanes >= k are never read or written as list slots.
//
// mevos_offer inserts one candidate (s, m), warp-uniform, all 32 lanes calling. The entries that
// rank before the candidate form a prefix of the sorted list; its length is the insert position.
// Entries from there on move down one lane; the last one falls off. pos == k: not in the top-k.
__device__ __forceinline__ void mevos_offer(float& ls, int& li, float s, int m, int k, int lane) {
    const unsigned before = __ballot_sync(MEVOS_FULL_MASK, lane < k && mevos_ranks_before(ls, li, s, m));
    const int pos = __popc(before);
    const float up_s = __shfl_up_sync(MEVOS_FULL_MASK, ls, 1);
    const int up_i = __shfl_up_sync(MEVOS_FULL_MASK, li, 1);
    if (pos < k) {
        if (lane == pos) {
            ls = s;
            li = m;
        } else if (lane > pos && lane < k) {
            ls = up_s;
            li = up_i;
        }
    }
}

// Offers up to 32 candidates at once, one per lane (cs, cm; cvalid = false for none). Only the
// candidates that beat the current k-th entry are inserted, one at a time in lane order; the
// threshold only rises, and mevos_offer itself drops a candidate that no longer makes the list,
// so the order of insertion does not change the result (the order is total).
__device__ __forceinline__ void mevos_offer_lanes(float& ls, int& li, float cs, int cm, bool cvalid, int k, int lane) {
    const float ts = __shfl_sync(MEVOS_FULL_MASK, ls, k - 1);
    const int ti = __shfl_sync(MEVOS_FULL_MASK, li, k - 1);
    unsigned pending = __ballot_sync(MEVOS_FULL_MASK, cvalid && mevos_ranks_before(cs, cm, ts, ti));
    while (pending) {
        const int src = __ffs(pending) - 1;
        pending &= pending - 1;
        const float s = __shfl_sync(MEVOS_FULL_MASK, cs, src);
        const int m = __shfl_sync(MEVOS_FULL_MASK, cm, src);
        mevos_offer(ls, li, s, m, k, lane);
    }
}

__device__ __forceinline__ float mevos_warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(MEVOS_FULL_MASK, x, o);
    return x;
}

// ---- loads of 16-bit floats without cuda_fp16.h -------------------------------------------

__device__ __forceinline__ float mevos_f16_to_f32(mevos_u16 x) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(x));
    return r;
}

__device__ __forceinline__ float mevos_bf16_to_f32(mevos_u16 x) {
    return __uint_as_float(((mevos_u32)x) << 16);  // bf16 is the top half of an fp32
}

// ---- cp.async (sm_80+) ------------------------------------------------------------------

__device__ __forceinline__ mevos_u32 mevos_smem_addr(const void* p) {
    return (mevos_u32)__cvta_generic_to_shared(p);
}

// Copies 16 bytes global -> shared; src_bytes = 0 reads nothing and zero-fills the 16 bytes.
__device__ __forceinline__ void mevos_cp_async16(mevos_u32 dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void mevos_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

__device__ __forceinline__ void mevos_cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
