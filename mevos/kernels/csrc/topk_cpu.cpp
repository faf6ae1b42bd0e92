// Top-k affinity on the CPU: the contract of mevos/kernels/reference.py `topk_affinity`.
//
// Built by mevos/kernels/cpu.py with the system C++ compiler on first use and loaded through
// ctypes: plain C ABI on contiguous float32 buffers, no torch headers, no OpenMP (its runtime
// would be a second one beside torch's), std::thread for the cores.
//
// Work unit: a block of QV consecutive query cells of one grid row. For each memory frame in
// order, a pinned frame (or any frame when there is no radius) is scanned in full; a windowed
// frame only over the rows y-r..y+r and the columns spanned by the block's windows. Scores come
// from one micro-kernel (QV queries x NJ memory rows, each lane a sequential fused multiply-add
// over the channels), so equal vectors give bit-equal scores whichever path computed them: the
// tie rule (lower index first) then holds exactly. Candidates reach each query in ascending
// memory index, so a strict `>` against the k-th kept score keeps the lower index on ties.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int QV = 16;  // queries per block (one AVX-512 register, two AVX2 ones)
constexpr int NJ = 8;   // memory rows per micro-kernel call

typedef float vq __attribute__((vector_size(QV * sizeof(float))));

// acc[j][i] = sum_c qt[c*QV + i] * rows[j][c], c ascending, one FMA per term.
inline void micro_kernel(const float* __restrict qt, const float* const* rows, int C, vq* __restrict acc) {
  vq a[NJ];
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j) a[j] = vq{};
  for (int c = 0; c < C; ++c) {
    vq q;
    std::memcpy(&q, qt + static_cast<size_t>(c) * QV, sizeof(vq));
#pragma GCC unroll 8
    for (int j = 0; j < NJ; ++j) a[j] += q * rows[j][c];
  }
#pragma GCC unroll 8
  for (int j = 0; j < NJ; ++j) acc[j] = a[j];
}

// Bit i set when lane i of s is above lane i of thr (NaN compares false).
inline uint32_t above(const vq& s, const vq& thr) {
#if defined(__AVX512F__)
  __m512 a, b;
  std::memcpy(&a, &s, sizeof a);
  std::memcpy(&b, &thr, sizeof b);
  return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
#elif defined(__AVX__)
  __m256 a0, a1, b0, b1;
  std::memcpy(&a0, &s, sizeof a0);
  std::memcpy(&a1, reinterpret_cast<const char*>(&s) + 32, sizeof a1);
  std::memcpy(&b0, &thr, sizeof b0);
  std::memcpy(&b1, reinterpret_cast<const char*>(&thr) + 32, sizeof b1);
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a0, b0, _CMP_GT_OQ))) |
         (static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(a1, b1, _CMP_GT_OQ))) << 8);
#else
  uint32_t bits = 0;
  for (int i = 0; i < QV; ++i) bits |= static_cast<uint32_t>(s[i] > thr[i]) << i;
  return bits;
#endif
}

struct TopK {
  // Per query: kept scores (descending, lower index first on ties) and their memory indices.
  int k;
  std::vector<float> score;
  std::vector<int64_t> index;
  std::vector<int> count;
  vq threshold;  // k-th kept score per query, -inf until k are kept

  TopK(int k_) : k(k_), score(QV * k_), index(QV * k_), count(QV) {}

  void reset() {
    std::fill(count.begin(), count.end(), 0);
    for (int i = 0; i < QV; ++i) threshold[i] = -std::numeric_limits<float>::infinity();
  }

  // Offer the lanes of s selected by bits (each above its threshold) as memory index m.
  inline void offer_lanes(const vq& s, uint32_t bits, int64_t m) {
    while (bits) {
      const int i = __builtin_ctz(bits);
      bits &= bits - 1;
      offer(i, s[i], m);
    }
  }

  inline void offer(int i, float s, int64_t m) {
    float* sc = &score[i * k];
    int64_t* ix = &index[i * k];
    int n = count[i];
    int pos = n < k ? n : k - 1;
    if (n < k) count[i] = n + 1;
    // Strict `<`: an equal score already kept came earlier (lower index) and stays ahead.
    while (pos > 0 && sc[pos - 1] < s) {
      sc[pos] = sc[pos - 1];
      ix[pos] = ix[pos - 1];
      --pos;
    }
    sc[pos] = s;
    ix[pos] = m;
    if (count[i] == k) threshold[i] = sc[k - 1];
  }
};

struct Problem {
  const float* query;   // P x C, already divided by the temperature
  const float* memory;  // T x P x C
  const uint8_t* pinned;
  int64_t T, P, C, h, w, k, radius;  // radius < 0: none
  float* out_w;
  int64_t* out_i;
};

// Returns true when some computed score is not finite.
bool run_block(const Problem& pb, int64_t y, int64_t x0, int nq, std::vector<float>& qt, TopK& top) {
  const int64_t C = pb.C, P = pb.P, w = pb.w, r = pb.radius;
  const int64_t q0 = y * w + x0;
  std::fill(qt.begin(), qt.end(), 0.0f);
  for (int i = 0; i < nq; ++i) {
    const float* src = pb.query + (q0 + i) * C;
    for (int64_t c = 0; c < C; ++c) qt[c * QV + i] = src[c];
  }
  top.reset();
  vq acc[NJ];
  const float* rows[NJ];
  // x * 0 is 0 for finite x and NaN for inf/NaN: one vector tells whether any score was bad.
  vq check = vq{};
  const uint32_t lanes = nq >= 32 ? 0xFFFFFFFFu : (1u << nq) - 1u;

  for (int64_t t = 0; t < pb.T; ++t) {
    const float* frame = pb.memory + t * P * C;
    const int64_t base = t * P;
    if (r < 0 || pb.pinned[t]) {
      for (int64_t p0 = 0; p0 < P; p0 += NJ) {
        const int nj = static_cast<int>(std::min<int64_t>(NJ, P - p0));
        for (int j = 0; j < NJ; ++j) rows[j] = frame + (p0 + std::min(j, nj - 1)) * C;
        micro_kernel(qt.data(), rows, static_cast<int>(C), acc);
        for (int j = 0; j < nj; ++j) {
          check += acc[j] * 0.0f;
          top.offer_lanes(acc[j], above(acc[j], top.threshold) & lanes, base + p0 + j);
        }
      }
    } else {
      const int64_t y0 = std::max<int64_t>(0, y - r), y1 = std::min<int64_t>(pb.h - 1, y + r);
      const int64_t xa = std::max<int64_t>(0, x0 - r), xb = std::min<int64_t>(w - 1, x0 + nq - 1 + r);
      for (int64_t yy = y0; yy <= y1; ++yy) {
        for (int64_t p0 = xa; p0 <= xb; p0 += NJ) {
          const int nj = static_cast<int>(std::min<int64_t>(NJ, xb + 1 - p0));
          for (int j = 0; j < NJ; ++j) rows[j] = frame + (yy * w + p0 + std::min(j, nj - 1)) * C;
          micro_kernel(qt.data(), rows, static_cast<int>(C), acc);
          for (int j = 0; j < nj; ++j) {
            check += acc[j] * 0.0f;
            const int64_t px = p0 + j;
            // Queries x0+i with |px - (x0+i)| <= r.
            const int ilo = static_cast<int>(std::max<int64_t>(0, px - r - x0));
            const int ihi = static_cast<int>(std::min<int64_t>(nq - 1, px + r - x0));
            if (ilo > ihi) continue;
            const uint32_t window = ((ihi >= 31 ? 0xFFFFFFFFu : ((1u << (ihi + 1)) - 1u))) & ~((1u << ilo) - 1u);
            top.offer_lanes(acc[j], above(acc[j], top.threshold) & window, base + yy * w + px);
          }
        }
      }
    }
  }

  const int64_t k = pb.k;
  for (int i = 0; i < nq; ++i) {
    const float* sc = &top.score[i * k];
    const int64_t* ix = &top.index[i * k];
    const int n = top.count[i];
    float* ow = pb.out_w + (q0 + i) * k;
    int64_t* oi = pb.out_i + (q0 + i) * k;
    // Softmax over the kept scores (sc[0] is the largest).
    double sum = 0.0;
    for (int j = 0; j < n; ++j) sum += std::exp(static_cast<double>(sc[j]) - sc[0]);
    for (int j = 0; j < n; ++j) {
      ow[j] = static_cast<float>(std::exp(static_cast<double>(sc[j]) - sc[0]) / sum);
      oi[j] = ix[j];
    }
    for (int64_t j = n; j < k; ++j) {
      ow[j] = 0.0f;
      oi[j] = -1;
    }
  }
  for (int i = 0; i < QV; ++i)
    if (check[i] != 0.0f) return true;
  return false;
}

}  // namespace

extern "C" {

int mevos_cpu_abi_version() { return 2; }

// out[p] = sum_j weights[p, j] * memory[indices[p, j]] over the slots j with an index >= 0, in
// slot order, without gathering the rows into a temporary. Returns 1 (output undefined) when an
// index is outside [-1, M).
int mevos_readout(const float* weights, const int64_t* indices, const float* memory, int64_t P, int64_t k, int64_t M,
                  int64_t C, int64_t threads, float* out) {
  for (int64_t i = 0; i < P * k; ++i)
    if (indices[i] < -1 || indices[i] >= M) return 1;
  constexpr int64_t ROWS = 16;  // output rows per job
  const int64_t jobs = (P + ROWS - 1) / ROWS;
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < jobs;) {
      for (int64_t p = b * ROWS; p < std::min(P, (b + 1) * ROWS); ++p) {
        float* __restrict o = out + p * C;
        std::fill(o, o + C, 0.0f);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t m = indices[p * k + j];
          if (m < 0) continue;
          const float wj = weights[p * k + j];
          const float* __restrict row = memory + m * C;
          for (int64_t c = 0; c < C; ++c) o[c] += wj * row[c];
        }
      }
    }
  };
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, jobs));
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < n; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  return 0;
}

// Returns 0 on success, 1 when a score was not finite (outputs then undefined).
int mevos_topk_affinity(const float* query, const float* memory, const uint8_t* pinned, int64_t T, int64_t P,
                        int64_t C, int64_t h, int64_t w, int64_t k, int64_t radius, int64_t threads, float* out_w,
                        int64_t* out_i) {
  Problem pb{query, memory, pinned, T, P, C, h, w, k, radius, out_w, out_i};
  const int64_t per_row = (w + QV - 1) / QV;
  const int64_t blocks = h * per_row;
  std::atomic<int64_t> next{0};
  std::atomic<bool> bad{false};
  auto worker = [&]() {
    std::vector<float> qt(static_cast<size_t>(C) * QV);
    TopK top(static_cast<int>(k));
    bool my_bad = false;
    for (;;) {
      const int64_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks) break;
      const int64_t y = b / per_row, x0 = (b % per_row) * QV;
      const int nq = static_cast<int>(std::min<int64_t>(QV, w - x0));
      my_bad |= run_block(pb, y, x0, nq, qt, top);
    }
    if (my_bad) bad.store(true);
  };
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, blocks));
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < n; ++i) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
  return bad.load() ? 1 : 0;
}

}  // extern "C"
