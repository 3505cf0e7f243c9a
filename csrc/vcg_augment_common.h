// What the CPU (vcg_augment.cpp) and CUDA (vcg_augment_cuda.cu) versions of ecgfast::vcg_augment share:
// the noise stream (Triton's tl.randn, so every backend adds the same noise), the argument checks, and the
// preparation of the small tensors and the dispatch on the input dtype. The kernels themselves stay apart.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#ifdef __CUDACC__
#define ECGFAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ECGFAST_HOST_DEVICE inline
#endif

namespace ecgfast {
namespace vcg {

constexpr int kLeads = 8;

ECGFAST_HOST_DEVICE uint32_t mulhi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((uint64_t{a} * b) >> 32);
#endif
}

ECGFAST_HOST_DEVICE float uniform01(uint32_t u) {  // Triton's uint_to_uniform_float for 32 bits
  int32_t s = static_cast<int32_t>(u);
  if (s < 0) s = ~s;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// Triton's tl.randn(seed, counter): Philox4x32-10 with key (seed_lo, seed_hi), counter (lo, hi, 0, 0), Box-Muller.
ECGFAST_HOST_DEVICE float philox_randn(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#ifdef __CUDA_ARCH__
#pragma unroll
#endif
  for (int i = 0; i < 10; ++i) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = mulhi32(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const float u1 = fmaxf(1.0e-7f, uniform01(c0));
  const float th = 6.283185307179586f * uniform01(c1);
  return sqrtf(-2.0f * logf(u1)) * cosf(th);
}

// The op's small tensors, checked and made float32/int64 contiguous on x's device; gain/base null for float x.
struct Prepared {
  at::Tensor matrices, starts, windows, gain, base;
  const float* gain_ptr = nullptr;
  const float* base_ptr = nullptr;
  int64_t n_views = 0, batch = 0, n = 0, length = 0;  // n: input samples T; length: output samples per view L
};

inline Prepared check_and_prepare(const at::Tensor& x, const std::optional<at::Tensor>& gain,
                                  const std::optional<at::Tensor>& baseline, const at::Tensor& matrices,
                                  const at::Tensor& mask_starts, const at::Tensor& windows, int64_t length,
                                  int64_t mask_length, at::ScalarType out_dtype) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == kLeads && x.size(0) >= 1 && x.size(2) >= 1,
              "vcg_augment: x must be (B, 8, T) with B, T >= 1, got ", x.sizes());
  Prepared p;
  p.batch = x.size(0);
  p.n = x.size(2);
  TORCH_CHECK(matrices.dim() == 4 && (matrices.size(0) == 1 || matrices.size(0) == 2) &&
                  matrices.size(1) == p.batch && matrices.size(2) == kLeads && matrices.size(3) == kLeads,
              "vcg_augment: matrices must be (V, B, 8, 8) with V in {1, 2}, got ", matrices.sizes());
  p.n_views = matrices.size(0);
  TORCH_CHECK(mask_starts.dim() == 3 && mask_starts.size(0) == p.n_views && mask_starts.size(1) == p.batch &&
                  mask_starts.size(2) == kLeads,
              "vcg_augment: mask_starts must be (V, B, 8), got ", mask_starts.sizes());
  TORCH_CHECK(length >= 1 && length <= p.n, "vcg_augment: length must be in [1, T], got ", length);
  p.length = length;
  TORCH_CHECK(windows.dim() == 2 && windows.size(0) == p.n_views && windows.size(1) == p.batch,
              "vcg_augment: windows must be (V, B), got ", windows.sizes());
  TORCH_CHECK(mask_length >= 0 && mask_length <= length, "vcg_augment: mask_length must be in [0, L], got ",
              mask_length);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "vcg_augment: out_dtype must be float32 or "
              "bfloat16, got ", out_dtype);
  p.matrices = matrices.to(x.device(), at::kFloat).contiguous();
  p.starts = mask_starts.to(x.device(), at::kLong).contiguous();
  p.windows = windows.to(x.device(), at::kLong).contiguous();  // samples outside [0, T) read as 0 in the kernels
  if (x.scalar_type() == at::kShort) {
    TORCH_CHECK(gain.has_value() && baseline.has_value(), "vcg_augment: int16 x needs gain and baseline");
    p.gain = gain->to(x.device(), at::kFloat).contiguous();
    p.base = baseline->to(x.device(), at::kFloat).contiguous();
    TORCH_CHECK(p.gain.numel() == p.batch && p.base.numel() == p.batch, "vcg_augment: gain and baseline must be (B,)");
    p.gain_ptr = p.gain.data_ptr<float>();
    p.base_ptr = p.base.data_ptr<float>();
  }
  return p;
}

// Calls f(in_t{}) with in_t the C++ type of x's dtype: int16, float, at::Half or at::BFloat16.
template <typename F>
void dispatch_input(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kShort: f(int16_t{}); break;
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, "vcg_augment: x must be int16, float16, bfloat16 or float32, got ", dtype);
  }
}

}  // namespace vcg
}  // namespace ecgfast
