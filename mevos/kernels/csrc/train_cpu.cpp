// Training-time layers on the CPU: batch norm (training statistics) with an optional ReLU fused
// in, and max pooling, forward and backward, over channels-last tensors (a contiguous M x C matrix,
// M = N*H*W) in float32 or bfloat16. The contract is mevos/kernels/train_cpu.py's: the same values
// as torch's batch_norm + relu and max_pool2d in training mode (to float rounding), one pass or two
// over the tensor where torch makes several, and max-pool indices kept as one byte per output.
//
// Built by mevos/kernels/train_cpu.py with the system C++ compiler on first use (the same build
// as topk_cpu.cpp) and loaded through ctypes: plain C ABI, no torch headers, std::thread for the
// cores. Sums run in float over blocks of rows and in double across blocks.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t BLOCK = 64;  // rows summed in float before they are added in double

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  const uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {  // round to nearest even, as torch; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  p[i] = uint16_t(((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : rounded);
}

// body(c) for c in [0, C): eight channels at a time with a fixed trip count, so that the compiler
// vectorises each group whatever C is (a loop over a runtime C = 24 of bytes or bfloat16 would be
// planned for 64 or 32 lanes and run as its scalar remainder), then the rest one by one.
template <class Body>
inline void over_channels(int64_t C, Body body) {
  int64_t c0 = 0;
  for (; c0 + 8 <= C; c0 += 8) {
#pragma GCC unroll 8
    for (int64_t j = 0; j < 8; ++j) body(c0 + j);
  }
  for (; c0 < C; ++c0) body(c0);
}

// Runs fn(begin, end, part) over [0, n) split into `parts` contiguous ranges, one thread each.
template <class Fn>
void parallel(int64_t n, int64_t parts, Fn fn) {
  parts = std::max<int64_t>(1, std::min(parts, n));
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < parts; ++t) pool.emplace_back(fn, n * t / parts, n * (t + 1) / parts, t);
  fn(0, n / parts, 0);
  for (auto& th : pool) th.join();
}

// Two per-channel sums over the M rows: row(m, a, b) adds row m's terms into the float accumulators
// a[0..C) and b[0..C). Summed in float over BLOCK rows, in double across blocks and parts;
// out: 2 x C (a's sums, then b's).
template <class Row>
void paired_sums(int64_t M, int64_t C, int64_t parts, double* out, Row row) {
  std::vector<double> partial(parts * 2 * C, 0.0);
  parallel(M, parts, [&](int64_t begin, int64_t end, int64_t part) {
    std::vector<float> acc(2 * C);
    double* __restrict total = partial.data() + part * 2 * C;
    for (int64_t b = begin; b < end; b += BLOCK) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t m = b; m < std::min(end, b + BLOCK); ++m) row(m, acc.data(), acc.data() + C);
      for (int64_t c = 0; c < 2 * C; ++c) total[c] += acc[c];
    }
  });
  for (int64_t c = 0; c < 2 * C; ++c) {
    out[c] = 0.0;
    for (int64_t p = 0; p < parts; ++p) out[c] += partial[p * 2 * C + c];
  }
}

template <class T>
void bn_forward(const T* x, const T* res, T* y, int64_t M, int64_t C, const float* weight, const float* bias,
                double eps, int relu, int64_t threads, float* mean_out, float* invstd_out, float* var_out) {
  // One pass: per-channel sums of d = x - x[0] and of d^2 (shifted by the first row's value, so
  // that the variance E[d^2] - E[d]^2 does not cancel when the mean is large against the spread).
  const int64_t parts = std::max<int64_t>(1, std::min(threads, M / 4096 + 1));
  std::vector<float> first(C);
  for (int64_t c = 0; c < C; ++c) first[c] = load(x, c);
  const float* __restrict f0 = first.data();
  std::vector<double> sums(2 * C);
  paired_sums(M, C, parts, sums.data(), [&](int64_t m, float* __restrict s1, float* __restrict s2) {
    const T* __restrict xr = x + m * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = load(xr, c) - f0[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  });
  std::vector<double> mean(C), s(C), dmean(C);
  for (int64_t c = 0; c < C; ++c) {
    dmean[c] = sums[c] / double(M);
    mean[c] = double(first[c]) + dmean[c];
    s[c] = sums[C + c];
  }
  std::vector<float> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    const double var = std::max(0.0, s[c] / double(M) - dmean[c] * dmean[c]);
    const double invstd = 1.0 / std::sqrt(var + eps);
    mean_out[c] = float(mean[c]);
    var_out[c] = float(var);
    invstd_out[c] = float(invstd);
    scale[c] = float(double(weight[c]) * invstd);
    shift[c] = float(double(bias[c]) - mean[c] * double(weight[c]) * invstd);
  }
  parallel(M, parts, [&](int64_t begin, int64_t end, int64_t) {
    const float* __restrict sc = scale.data();
    const float* __restrict sh = shift.data();
    for (int64_t m = begin; m < end; ++m) {
      const T* __restrict xr = x + m * C;
      const T* __restrict rr = res ? res + m * C : nullptr;
      T* __restrict yr = y + m * C;
      for (int64_t c = 0; c < C; ++c) {
        float v = load(xr, c) * sc[c] + sh[c];
        if (rr) v += load(rr, c);
        if (relu) v = v > 0.0f ? v : (v == v ? 0.0f : v);  // relu, NaN kept (as torch's clamp_min)
        store(yr, c, v);
      }
    }
  });
}

template <class T>
void bn_backward(const T* gy, const T* x, const T* y, T* dx, T* dres, int64_t M, int64_t C, const float* mean,
                 const float* invstd, const float* weight, int relu, int64_t threads, float* dweight, float* dbias) {
  // g = dL/d(bn output): the incoming gradient where the ReLU passed its input (y > 0, or NaN as
  // torch's threshold_backward), else 0. Pass 1: sum(g) and sum(g (x - mean)) per channel.
  const int64_t parts = std::max<int64_t>(1, std::min(threads, M / 4096 + 1));
  const std::vector<float> meanv(mean, mean + C);
  const float* __restrict mu = meanv.data();
  std::vector<double> sums(2 * C);
  paired_sums(M, C, parts, sums.data(), [&](int64_t m, float* __restrict sg, float* __restrict sx) {
    const T* __restrict gr = gy + m * C;
    const T* __restrict yr = y + m * C;
    const T* __restrict xr = x + m * C;
    for (int64_t c = 0; c < C; ++c) {
      const float gv = (relu && load(yr, c) <= 0.0f) ? 0.0f : load(gr, c);
      sg[c] += gv;
      sx[c] += gv * (load(xr, c) - mu[c]);
    }
    if (dres) {  // the residual's gradient: the same g
      T* __restrict dr = dres + m * C;
      for (int64_t c = 0; c < C; ++c) store(dr, c, (relu && load(yr, c) <= 0.0f) ? 0.0f : load(gr, c));
    }
  });
  // dx = w invstd (g - sum(g)/M - xhat sum(g xhat)/M), xhat = (x - mean) invstd
  std::vector<float> coef(3 * C);
  for (int64_t c = 0; c < C; ++c) {
    const double sgc = sums[c], sxc = sums[C + c];
    const double is = invstd[c], w = weight[c];
    dbias[c] = float(sgc);
    dweight[c] = float(sxc * is);
    coef[c] = float(w * is);
    coef[C + c] = float(-w * is * is * is * sxc / double(M));
    coef[2 * C + c] = float(-w * is * sgc / double(M));
  }
  parallel(M, parts, [&](int64_t begin, int64_t end, int64_t) {
    const float* __restrict a = coef.data();
    const float* __restrict bb = coef.data() + C;
    const float* __restrict k = coef.data() + 2 * C;
    for (int64_t m = begin; m < end; ++m) {
      const T* __restrict gr = gy + m * C;
      const T* __restrict yr = y + m * C;
      const T* __restrict xr = x + m * C;
      T* __restrict out = dx + m * C;
      for (int64_t c = 0; c < C; ++c) {
        const float gv = (relu && load(yr, c) <= 0.0f) ? 0.0f : load(gr, c);
        store(out, c, a[c] * gv + bb[c] * (load(xr, c) - mu[c]) + k[c]);
      }
    }
  });
}

// Max pooling of an N x H x W x C tensor, kernel k, stride s, padding p (-inf outside), as torch:
// the first maximum in window order wins, NaN wins over numbers. idx: the winner's place in its
// window (kh * k + kw), one byte per output.
template <class T>
void pool_forward(const T* x, T* y, uint8_t* idx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW,
                  int64_t k, int64_t s, int64_t p, int64_t threads) {
  parallel(N * OH, threads, [&](int64_t begin, int64_t end, int64_t) {
    std::vector<float> best(C);
    std::vector<int32_t> code_buf(C);
    float* __restrict bv = best.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / OH, oh = row % OH;
      for (int64_t ow = 0; ow < OW; ++ow) {
        const int64_t o = ((n * OH + oh) * OW + ow) * C;
        int32_t* __restrict bi = code_buf.data();
        bool first = true;
        for (int64_t kh = 0; kh < k; ++kh) {
          const int64_t ih = oh * s - p + kh;
          if (ih < 0 || ih >= H) continue;
          for (int64_t kw = 0; kw < k; ++kw) {
            const int64_t iw = ow * s - p + kw;
            if (iw < 0 || iw >= W) continue;
            const T* __restrict xr = x + ((n * H + ih) * W + iw) * C;
            const int32_t code = int32_t(kh * k + kw);
            if (first) {  // torch starts from -inf with the first valid place as the index
              over_channels(C, [&](int64_t c) {
                const float v = load(xr, c);
                const bool take = v > -std::numeric_limits<float>::infinity() || v != v;
                bv[c] = take ? v : -std::numeric_limits<float>::infinity();
                bi[c] = code;
              });
              first = false;
              continue;
            }
            over_channels(C, [&](int64_t c) {
              const float v = load(xr, c);
              const bool take = v > bv[c] || v != v;
              bv[c] = take ? v : bv[c];
              bi[c] = take ? code : bi[c];
            });
          }
        }
        T* __restrict yr = y + o;
        uint8_t* __restrict ir = idx + o;
        over_channels(C, [&](int64_t c) {
          store(yr, c, bv[c]);
          ir[c] = uint8_t(bi[c]);
        });
      }
    }
  });
}

template <class T>
void pool_backward(const T* gy, const uint8_t* idx, T* dx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH,
                   int64_t OW, int64_t k, int64_t s, int64_t p, int64_t threads) {
  // One image per job (windows overlap only within an image), summed in float.
  parallel(N, threads, [&](int64_t begin, int64_t end, int64_t) {
    std::vector<float> acc(H * W * C), gbuf(C);
    std::vector<int32_t> cbuf(C);
    for (int64_t n = begin; n < end; ++n) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          const int64_t o = ((n * OH + oh) * OW + ow) * C;
          const T* __restrict gr = gy + o;
          const uint8_t* __restrict ir = idx + o;
          float* __restrict gv = gbuf.data();
          int32_t* __restrict cv = cbuf.data();
          for (int64_t c = 0; c < C; ++c) {
            gv[c] = load(gr, c);
            cv[c] = ir[c];
          }
          // window place by window place: a masked add over the channels (vectorised), not a scatter
          for (int64_t kh = 0; kh < k; ++kh) {
            const int64_t ih = oh * s - p + kh;
            if (ih < 0 || ih >= H) continue;
            for (int64_t kw = 0; kw < k; ++kw) {
              const int64_t iw = ow * s - p + kw;
              if (iw < 0 || iw >= W) continue;
              const int32_t code = int32_t(kh * k + kw);
              float* __restrict a = acc.data() + (ih * W + iw) * C;
              over_channels(C, [&](int64_t c) { a[c] += cv[c] == code ? gv[c] : 0.0f; });
            }
          }
        }
      T* __restrict out = dx + n * H * W * C;
      const float* __restrict a = acc.data();
      for (int64_t i = 0; i < H * W * C; ++i) store(out, i, a[i]);
    }
  });
}

// The backbone's input: (image - mean) / std per channel (the same two float operations as torch's
// sub and div), written channels-last in T, with the masks (if any) as a 4th channel. image: N x 3
// x H x W float32, each image contiguous, image n at img + n * img_stride (0: one image for all);
// masks: N x 1 x H x W float32 contiguous or null; out: N x H x W x (3 or 4).
template <class T>
void normalize_input(const float* img, int64_t img_stride, const float* masks, T* out, int64_t N, int64_t H, int64_t W,
                     const float* mean, const float* stdv, int64_t threads) {
  const int64_t cout = masks ? 4 : 3, hw = H * W;
  const float m0 = mean[0], m1 = mean[1], m2 = mean[2], s0 = stdv[0], s1 = stdv[1], s2 = stdv[2];
  parallel(N * H, threads, [&](int64_t begin, int64_t end, int64_t) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, h = row % H;
      const float* __restrict r = img + n * img_stride + h * W;
      T* __restrict o = out + row * W * cout;
      for (int64_t w = 0; w < W; ++w) {
        store(o, w * cout, (r[w] - m0) / s0);
        store(o, w * cout + 1, (r[hw + w] - m1) / s1);
        store(o, w * cout + 2, (r[2 * hw + w] - m2) / s2);
      }
      if (masks) {
        const float* __restrict mk = masks + n * hw + h * W;
        for (int64_t w = 0; w < W; ++w) store(o, w * 4 + 3, mk[w]);
      }
    }
  });
}

// Runs fn with a null pointer of the element type that dtype names (0 float32, 1 bfloat16 as its
// 16 bits) and returns 0, or returns 1 for an unknown dtype: each entry point below is one body.
template <class Fn>
int by_dtype(int dtype, Fn fn) {
  if (dtype == 0) {
    fn(static_cast<float*>(nullptr));
    return 0;
  }
  if (dtype == 1) {
    fn(static_cast<uint16_t*>(nullptr));
    return 0;
  }
  return 1;
}

}  // namespace

extern "C" {

int mevos_train_abi_version() { return 4; }

// dtype (every entry point): 0 float32, 1 bfloat16. Each returns 0, or 1 for an unknown dtype or
// (max pool) a window it does not handle.

int mevos_normalize_input(const float* img, int64_t img_stride, const float* masks, void* out, int dtype, int64_t N,
                          int64_t H, int64_t W, const float* mean, const float* stdv, int64_t threads) {
  return by_dtype(dtype, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    normalize_input(img, img_stride, masks, static_cast<T*>(out), N, H, W, mean, stdv, threads);
  });
}

// y = [relu](bn(x) [+ res]); res may be null.
int mevos_bn_forward(const void* x, const void* res, void* y, int dtype, int64_t M, int64_t C, const float* weight,
                     const float* bias, double eps, int relu, int64_t threads, float* mean, float* invstd,
                     float* var) {
  return by_dtype(dtype, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    bn_forward(static_cast<const T*>(x), static_cast<const T*>(res), static_cast<T*>(y), M, C, weight, bias, eps, relu,
               threads, mean, invstd, var);
  });
}

// dres (may be null): the gradient of the residual of the forward.
int mevos_bn_backward(const void* gy, const void* x, const void* y, void* dx, void* dres, int dtype, int64_t M,
                      int64_t C, const float* mean, const float* invstd, const float* weight, int relu,
                      int64_t threads, float* dweight, float* dbias) {
  return by_dtype(dtype, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    bn_backward(static_cast<const T*>(gy), static_cast<const T*>(x), static_cast<const T*>(y), static_cast<T*>(dx),
                static_cast<T*>(dres), M, C, mean, invstd, weight, relu, threads, dweight, dbias);
  });
}

int mevos_pool_forward(const void* x, void* y, uint8_t* idx, int dtype, int64_t N, int64_t H, int64_t W, int64_t C,
                       int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p, int64_t threads) {
  if (k < 1 || k * k > 256 || p < 0 || 2 * p > k) return 1;
  return by_dtype(dtype, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    pool_forward(static_cast<const T*>(x), static_cast<T*>(y), idx, N, H, W, C, OH, OW, k, s, p, threads);
  });
}

int mevos_pool_backward(const void* gy, const uint8_t* idx, void* dx, int dtype, int64_t N, int64_t H, int64_t W,
                        int64_t C, int64_t OH, int64_t OW, int64_t k, int64_t s, int64_t p, int64_t threads) {
  if (k < 1 || k * k > 256 || p < 0 || 2 * p > k) return 1;
  return by_dtype(dtype, [&](auto* t) {
    using T = std::remove_pointer_t<decltype(t)>;
    pool_backward(static_cast<const T*>(gy), idx, static_cast<T*>(dx), N, H, W, C, OH, OW, k, s, p, threads);
  });
}

}  // extern "C"
