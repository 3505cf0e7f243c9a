// Fused 3KG augmentation, CPU: (B, 8, T) ECGs -> (V, B, 8, L) views, one pass over the input.
//
// torch.ops.ecgfast.vcg_augment(x, gain, baseline, matrices, mask_starts, windows, shared_window, length,
//                               mask_length, noise_std, noise_seed, out_dtype) -> Tensor
//   x            (B, 8, T) int16 (adc units, with gain and baseline) or float16 / bfloat16 / float32 (mV), any strides
//   gain         (B,) float32, baseline (B,) float32: mV = (q - baseline) / gain; None for float x
//   matrices     (V, B, 8, 8) float32 lead transforms, V in {1, 2}
//   mask_starts  (V, B, 8) int64 ZeroMask block starts (taken mod L)
//   windows      (V, B) int64: view v of ECG b reads x[b, :, w + t], t < L (outside [0, T): 0); shared_window:
//                every view of an ECG has the same window, so its tile is read once
//   out[v, b, l, t] = 0 if (t - start) mod L < mask_length, else (M[v, b] @ x[b, :, w + t])[l] + noise_std * n
// with n Triton's tl.randn(noise_seed, ((v * B + b) * 8 + l) * L + t) (Philox4x32-10, Box-Muller).
// The parameters are drawn in Python (ecgfast/ops/vcg_augment.py); this file only applies them.
// Parallel over (ECG, chunk of kChunk samples) with at::parallel_for; the inner loops over a chunk vectorise.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "vcg_augment_common.h"

namespace ecgfast {
namespace {

using vcg::kLeads;
using vcg::philox_randn;
constexpr int64_t kChunk = 256;  // samples per work item: 8 x 256 float32 inputs stay in L1

template <typename in_t>
void load_tile(const in_t* x, int64_t sb, int64_t sl, int64_t st, const float* gain, const float* base, int64_t b,
               int64_t first, int64_t len, int64_t n, float (&xs)[kLeads][kChunk]) {
  // xs[k][j] = lead k of ECG b at sample first + j, in mV, for j < len; 0 where first + j is outside [0, n)
  const int64_t lo = std::clamp<int64_t>(-first, 0, len), hi = std::clamp<int64_t>(n - first, lo, len);
  for (int64_t k = 0; k < kLeads; ++k) {
    const in_t* row = x + b * sb + k * sl + first * st;
    for (int64_t j = 0; j < lo; ++j) xs[k][j] = 0.0f;
    for (int64_t j = lo; j < hi; ++j) xs[k][j] = static_cast<float>(row[j * st]);
    if (gain != nullptr) {
      const float g = gain[b], q0 = base[b];
      for (int64_t j = lo; j < hi; ++j) xs[k][j] = (xs[k][j] - q0) / g;
    }
    for (int64_t j = hi; j < len; ++j) xs[k][j] = 0.0f;
  }
}

template <typename in_t, typename out_t>
void vcg_augment_cpu_kernel(const in_t* x, int64_t sb, int64_t sl, int64_t st, const float* gain, const float* base,
                            const float* m, const int64_t* starts, const int64_t* windows, bool shared,
                            out_t* out, int64_t n_views, int64_t batch, int64_t n, int64_t length,
                            int64_t mask_length, float noise_std, uint64_t seed) {
  const int64_t n_chunks = (length + kChunk - 1) / kChunk;
  at::parallel_for(0, batch * n_chunks, 1, [&](int64_t begin, int64_t end) {
    float xs[kLeads][kChunk];
    float acc[kChunk];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_chunks, t0 = (item % n_chunks) * kChunk, len = std::min(kChunk, length - t0);
      for (int64_t v = 0; v < n_views; ++v) {
        const int64_t vb = v * batch + b;
        if (v == 0 || !shared) {  // a shared window's tile is loaded and decoded once for all views
          load_tile(x, sb, sl, st, gain, base, b, windows[vb] + t0, len, n, xs);
        }
        const float* mv = m + vb * kLeads * kLeads;
        for (int64_t l = 0; l < kLeads; ++l) {
          for (int64_t j = 0; j < len; ++j) acc[j] = 0.0f;
          for (int64_t k = 0; k < kLeads; ++k) {
            const float c = mv[l * kLeads + k];
            for (int64_t j = 0; j < len; ++j) acc[j] += c * xs[k][j];
          }
          const int64_t row = vb * kLeads + l;
          if (noise_std > 0.0f) {
            const uint64_t first = static_cast<uint64_t>(row * length + t0);
            for (int64_t j = 0; j < len; ++j) acc[j] += noise_std * philox_randn(seed, first + j);
          }
          const int64_t s = ((starts[row] % length) + length) % length;
          for (int64_t j = 0; j < len; ++j) {
            int64_t off = t0 + j - s;
            off += off < 0 ? length : 0;
            if (off < mask_length) acc[j] = 0.0f;
          }
          out_t* o = out + row * length + t0;
          for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(acc[j]);
        }
      }
    }
  });
}

template <typename in_t, typename out_t>
void run(const at::Tensor& x, const vcg::Prepared& p, bool shared, at::Tensor& out, int64_t mask_length,
         double noise_std, int64_t seed) {
  vcg_augment_cpu_kernel<in_t, out_t>(x.data_ptr<in_t>(), x.stride(0), x.stride(1), x.stride(2), p.gain_ptr,
                                      p.base_ptr, p.matrices.data_ptr<float>(), p.starts.data_ptr<int64_t>(),
                                      p.windows.data_ptr<int64_t>(), shared, out.data_ptr<out_t>(), p.n_views,
                                      p.batch, p.n, p.length, mask_length, static_cast<float>(noise_std),
                                      static_cast<uint64_t>(seed));
}

at::Tensor vcg_augment_cpu(const at::Tensor& x, const std::optional<at::Tensor>& gain,
                           const std::optional<at::Tensor>& baseline, const at::Tensor& matrices,
                           const at::Tensor& mask_starts, const at::Tensor& windows, bool shared_window,
                           int64_t length, int64_t mask_length, double noise_std, int64_t noise_seed,
                           at::ScalarType out_dtype) {
  const auto p = vcg::check_and_prepare(x, gain, baseline, matrices, mask_starts, windows, length, mask_length,
                                        out_dtype);
  auto out = at::empty({p.n_views, p.batch, kLeads, p.length}, x.options().dtype(out_dtype));
  vcg::dispatch_input(x.scalar_type(), [&](auto tag) {
    using in_t = decltype(tag);
    if (out.scalar_type() == at::kFloat) {
      run<in_t, float>(x, p, shared_window, out, mask_length, noise_std, noise_seed);
    } else {
      run<in_t, at::BFloat16>(x, p, shared_window, out, mask_length, noise_std, noise_seed);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ecgfast, m) {
  m.def(
      "vcg_augment(Tensor x, Tensor? gain, Tensor? baseline, Tensor matrices, Tensor mask_starts, Tensor windows, "
      "bool shared_window, int length, int mask_length, float noise_std, int noise_seed, ScalarType out_dtype) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(ecgfast, CPU, m) { m.impl("vcg_augment", &vcg_augment_cpu); }

}  // namespace ecgfast
