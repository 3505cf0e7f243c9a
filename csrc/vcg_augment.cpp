// Fused 3KG augmentation, CPU: (B, 8, T) ECGs -> (V, B, 8, T) views, one pass over the input.
//
// torch.ops.ecgfast.vcg_augment(x, gain, baseline, matrices, mask_starts, mask_length, noise_std, noise_seed,
//                               out_dtype) -> Tensor
//   x            (B, 8, T) int16 (adc units, with gain and baseline) or float16 / bfloat16 / float32 (mV), any strides
//   gain         (B,) float32, baseline (B,) float32: mV = (q - baseline) / gain; None for float x
//   matrices     (V, B, 8, 8) float32 lead transforms, V in {1, 2}
//   mask_starts  (V, B, 8) int64 ZeroMask block starts (taken mod T)
//   out[v, b, l, t] = 0 if (t - start) mod T < mask_length, else (M[v, b] @ x[b])[l, t] + noise_std * n
// with n Triton's tl.randn(noise_seed, ((v * B + b) * 8 + l) * T + t) (Philox4x32-10, Box-Muller).
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

template <typename in_t, typename out_t>
void vcg_augment_cpu_kernel(const in_t* x, int64_t sb, int64_t sl, int64_t st, const float* gain, const float* base,
                            const float* m, const int64_t* starts, out_t* out, int64_t n_views, int64_t batch,
                            int64_t n, int64_t mask_length, float noise_std, uint64_t seed) {
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  at::parallel_for(0, batch * n_chunks, 1, [&](int64_t begin, int64_t end) {
    float xs[kLeads][kChunk];
    float acc[kChunk];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / n_chunks, t0 = (item % n_chunks) * kChunk, len = std::min(kChunk, n - t0);
      for (int64_t k = 0; k < kLeads; ++k) {  // load and decode the 8 x len tile once for all views
        const in_t* row = x + b * sb + k * sl + t0 * st;
        for (int64_t j = 0; j < len; ++j) xs[k][j] = static_cast<float>(row[j * st]);
        if (gain != nullptr) {
          const float g = gain[b], q0 = base[b];
          for (int64_t j = 0; j < len; ++j) xs[k][j] = (xs[k][j] - q0) / g;
        }
      }
      for (int64_t v = 0; v < n_views; ++v) {
        const int64_t vb = v * batch + b;
        const float* mv = m + vb * kLeads * kLeads;
        for (int64_t l = 0; l < kLeads; ++l) {
          for (int64_t j = 0; j < len; ++j) acc[j] = 0.0f;
          for (int64_t k = 0; k < kLeads; ++k) {
            const float c = mv[l * kLeads + k];
            for (int64_t j = 0; j < len; ++j) acc[j] += c * xs[k][j];
          }
          const int64_t row = vb * kLeads + l;
          if (noise_std > 0.0f) {
            const uint64_t first = static_cast<uint64_t>(row * n + t0);
            for (int64_t j = 0; j < len; ++j) acc[j] += noise_std * philox_randn(seed, first + j);
          }
          const int64_t s = ((starts[row] % n) + n) % n;
          for (int64_t j = 0; j < len; ++j) {
            int64_t off = t0 + j - s;
            off += off < 0 ? n : 0;
            if (off < mask_length) acc[j] = 0.0f;
          }
          out_t* o = out + row * n + t0;
          for (int64_t j = 0; j < len; ++j) o[j] = static_cast<out_t>(acc[j]);
        }
      }
    }
  });
}

template <typename in_t>
void dispatch_out(const at::Tensor& x, const float* gain, const float* base, const at::Tensor& m,
                  const at::Tensor& starts, at::Tensor& out, int64_t mask_length, double noise_std, int64_t seed) {
  const in_t* xp = x.data_ptr<in_t>();
  const int64_t nv = m.size(0), batch = x.size(0), n = x.size(2);
  const float ns = static_cast<float>(noise_std);
  const uint64_t key = static_cast<uint64_t>(seed);
  if (out.scalar_type() == at::kFloat) {
    vcg_augment_cpu_kernel<in_t, float>(xp, x.stride(0), x.stride(1), x.stride(2), gain, base, m.data_ptr<float>(),
                                        starts.data_ptr<int64_t>(), out.data_ptr<float>(), nv, batch, n,
                                        mask_length, ns, key);
  } else {
    vcg_augment_cpu_kernel<in_t, at::BFloat16>(xp, x.stride(0), x.stride(1), x.stride(2), gain, base,
                                               m.data_ptr<float>(), starts.data_ptr<int64_t>(),
                                               out.data_ptr<at::BFloat16>(), nv, batch, n, mask_length, ns, key);
  }
}

at::Tensor vcg_augment_cpu(const at::Tensor& x, const std::optional<at::Tensor>& gain,
                           const std::optional<at::Tensor>& baseline, const at::Tensor& matrices,
                           const at::Tensor& mask_starts, int64_t mask_length, double noise_std, int64_t noise_seed,
                           at::ScalarType out_dtype) {
  const auto p = vcg::check_and_prepare(x, gain, baseline, matrices, mask_starts, mask_length, out_dtype);
  auto out = at::empty({p.n_views, p.batch, kLeads, p.n}, x.options().dtype(out_dtype));
  vcg::dispatch_input(x.scalar_type(), [&](auto tag) {
    dispatch_out<decltype(tag)>(x, p.gain_ptr, p.base_ptr, p.matrices, p.starts, out, mask_length, noise_std,
                                noise_seed);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ecgfast, m) {
  m.def(
      "vcg_augment(Tensor x, Tensor? gain, Tensor? baseline, Tensor matrices, Tensor mask_starts, int mask_length, "
      "float noise_std, int noise_seed, ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(ecgfast, CPU, m) { m.impl("vcg_augment", &vcg_augment_cpu); }

}  // namespace ecgfast
