// Fused 3KG augmentation, CUDA: the kernel of torch.ops.ecgfast.vcg_augment for CUDA tensors.
// Same schema and semantics as csrc/vcg_augment.cpp (which defines the schema); compiled only where setup.py
// builds CUDA sources, so the CPU build never needs this file.
//
// One thread per (ECG b, output sample t); blocks of kThreads consecutive samples of one ECG, flattened on grid x
// (B * cdiv(L, kThreads) blocks, no 65535 limit on B). Each thread reads its 8 input samples at each view's window
// (once for all views when they share it; coalesced across the warp for each lead; outside [0, T) reads 0),
// computes the views' 8x8 matvecs from shared-memory matrices, adds the Philox noise (Triton's tl.randn stream),
// applies the circular ZeroMask and writes 8 x V outputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "vcg_augment_common.h"

namespace ecgfast {
namespace {

using vcg::kLeads;
using vcg::philox_randn;
constexpr int kThreads = 256;

template <typename in_t>
__device__ __forceinline__ void load_decoded(const in_t* __restrict__ x, int64_t sb, int64_t sl, int64_t st,
                                             const float* __restrict__ gain, const float* __restrict__ base,
                                             int64_t b, int64_t pos, int64_t n, float (&xv)[kLeads]) {
  const bool ok = pos >= 0 && pos < n;
#pragma unroll
  for (int k = 0; k < kLeads; ++k) xv[k] = ok ? static_cast<float>(x[b * sb + k * sl + pos * st]) : 0.0f;
  if (gain != nullptr && ok) {
    const float g = gain[b], q0 = base[b];
#pragma unroll
    for (int k = 0; k < kLeads; ++k) xv[k] = (xv[k] - q0) / g;
  }
}

template <typename in_t, typename out_t, int V>
__global__ void vcg_augment_cuda_kernel(const in_t* __restrict__ x, int64_t sb, int64_t sl, int64_t st,
                                        const float* __restrict__ gain, const float* __restrict__ base,
                                        const float* __restrict__ m, const int64_t* __restrict__ starts,
                                        const int64_t* __restrict__ windows, bool shared, out_t* __restrict__ out,
                                        int64_t batch, int64_t n, int64_t length, int64_t n_tblocks,
                                        int64_t mask_length, float noise_std, uint64_t seed) {
  __shared__ float ms[V * kLeads * kLeads];
  __shared__ int64_t ss[V * kLeads];
  const int64_t b = blockIdx.x / n_tblocks;
  const int64_t t = (blockIdx.x % n_tblocks) * kThreads + threadIdx.x;
  for (int i = threadIdx.x; i < V * kLeads * kLeads; i += blockDim.x) {
    ms[i] = m[((i / (kLeads * kLeads)) * batch + b) * kLeads * kLeads + i % (kLeads * kLeads)];
  }
  for (int i = threadIdx.x; i < V * kLeads; i += blockDim.x) {
    const int64_t s = starts[((i / kLeads) * batch + b) * kLeads + i % kLeads] % length;
    ss[i] = s < 0 ? s + length : s;
  }
  __syncthreads();
  if (t >= length) return;
  float xv[kLeads];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if (v == 0 || !shared) load_decoded(x, sb, sl, st, gain, base, b, windows[v * batch + b] + t, n, xv);
#pragma unroll
    for (int l = 0; l < kLeads; ++l) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < kLeads; ++k) acc += ms[(v * kLeads + l) * kLeads + k] * xv[k];
      const int64_t idx = ((v * batch + b) * kLeads + l) * length + t;
      if (noise_std > 0.0f) acc += noise_std * philox_randn(seed, static_cast<uint64_t>(idx));
      int64_t off = t - ss[v * kLeads + l];
      off += off < 0 ? length : 0;
      out[idx] = static_cast<out_t>(off < mask_length ? 0.0f : acc);
    }
  }
}

template <typename in_t, typename out_t>
void launch(const at::Tensor& x, const vcg::Prepared& p, bool shared, at::Tensor& out, int64_t mask_length,
            double noise_std, int64_t seed) {
  const int64_t n_tblocks = (p.length + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned int>(p.batch * n_tblocks));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const float ns = static_cast<float>(noise_std);
  const uint64_t key = static_cast<uint64_t>(seed);
  auto kernel = p.n_views == 2 ? vcg_augment_cuda_kernel<in_t, out_t, 2> : vcg_augment_cuda_kernel<in_t, out_t, 1>;
  kernel<<<grid, kThreads, 0, stream>>>(x.data_ptr<in_t>(), x.stride(0), x.stride(1), x.stride(2), p.gain_ptr,
                                        p.base_ptr, p.matrices.data_ptr<float>(), p.starts.data_ptr<int64_t>(),
                                        p.windows.data_ptr<int64_t>(), shared, out.data_ptr<out_t>(), p.batch, p.n,
                                        p.length, n_tblocks, mask_length, ns, key);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor vcg_augment_cuda(const at::Tensor& x, const std::optional<at::Tensor>& gain,
                            const std::optional<at::Tensor>& baseline, const at::Tensor& matrices,
                            const at::Tensor& mask_starts, const at::Tensor& windows, bool shared_window,
                            int64_t length, int64_t mask_length, double noise_std, int64_t noise_seed,
                            at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cuda(), "vcg_augment (CUDA): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto p = vcg::check_and_prepare(x, gain, baseline, matrices, mask_starts, windows, length, mask_length,
                                        out_dtype);
  auto out = at::empty({p.n_views, p.batch, kLeads, p.length}, x.options().dtype(out_dtype));
  vcg::dispatch_input(x.scalar_type(), [&](auto tag) {
    using in_t = decltype(tag);
    if (out.scalar_type() == at::kFloat) {
      launch<in_t, float>(x, p, shared_window, out, mask_length, noise_std, noise_seed);
    } else {
      launch<in_t, at::BFloat16>(x, p, shared_window, out, mask_length, noise_std, noise_seed);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ecgfast, CUDA, m) { m.impl("vcg_augment", &vcg_augment_cuda); }

}  // namespace ecgfast
