// Fused 3KG augmentation, CUDA: the kernel of torch.ops.ecgfast.vcg_augment for CUDA tensors.
// Same schema and semantics as csrc/vcg_augment.cpp (which defines the schema); compiled only where setup.py
// builds CUDA sources, so the CPU build never needs this file.
//
// One thread per (ECG b, sample t); blocks of kThreads consecutive samples of one ECG, flattened on grid x
// (B * cdiv(T, kThreads) blocks, no 65535 limit on B). Each thread reads its 8 input samples once (coalesced
// across the warp for each lead), computes both views' 8x8 matvecs from shared-memory matrices, adds the
// Philox noise (Triton's tl.randn stream), applies the circular ZeroMask and writes 8 x V outputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

namespace ecgfast {
namespace {

constexpr int kLeads = 8;
constexpr int kThreads = 256;

__device__ __forceinline__ float uniform01(uint32_t u) {  // Triton's uint_to_uniform_float for 32 bits
  int32_t s = static_cast<int32_t>(u);
  if (s < 0) s = ~s;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

// Triton's tl.randn(seed, counter): Philox4x32-10 with key (seed_lo, seed_hi), counter (lo, hi, 0, 0).
__device__ __forceinline__ float philox_randn(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int i = 0; i < 10; ++i) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = __umulhi(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = __umulhi(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const float u1 = fmaxf(1.0e-7f, uniform01(c0));
  const float th = 6.283185307179586f * uniform01(c1);
  return sqrtf(-2.0f * logf(u1)) * cosf(th);
}

template <typename in_t, typename out_t, int V>
__global__ void vcg_augment_cuda_kernel(const in_t* __restrict__ x, int64_t sb, int64_t sl, int64_t st,
                                        const float* __restrict__ gain, const float* __restrict__ base,
                                        const float* __restrict__ m, const int64_t* __restrict__ starts,
                                        out_t* __restrict__ out, int64_t batch, int64_t n, int64_t n_tblocks,
                                        int64_t mask_length, float noise_std, uint64_t seed) {
  __shared__ float ms[V * kLeads * kLeads];
  __shared__ int64_t ss[V * kLeads];
  const int64_t b = blockIdx.x / n_tblocks;
  const int64_t t = (blockIdx.x % n_tblocks) * kThreads + threadIdx.x;
  for (int i = threadIdx.x; i < V * kLeads * kLeads; i += blockDim.x) {
    ms[i] = m[((i / (kLeads * kLeads)) * batch + b) * kLeads * kLeads + i % (kLeads * kLeads)];
  }
  for (int i = threadIdx.x; i < V * kLeads; i += blockDim.x) {
    const int64_t s = starts[((i / kLeads) * batch + b) * kLeads + i % kLeads] % n;
    ss[i] = s < 0 ? s + n : s;
  }
  __syncthreads();
  if (t >= n) return;
  float xv[kLeads];
#pragma unroll
  for (int k = 0; k < kLeads; ++k) xv[k] = static_cast<float>(x[b * sb + k * sl + t * st]);
  if (gain != nullptr) {
    const float g = gain[b], q0 = base[b];
#pragma unroll
    for (int k = 0; k < kLeads; ++k) xv[k] = (xv[k] - q0) / g;
  }
#pragma unroll
  for (int v = 0; v < V; ++v) {
#pragma unroll
    for (int l = 0; l < kLeads; ++l) {
      float acc = 0.0f;
#pragma unroll
      for (int k = 0; k < kLeads; ++k) acc += ms[(v * kLeads + l) * kLeads + k] * xv[k];
      const int64_t idx = ((v * batch + b) * kLeads + l) * n + t;
      if (noise_std > 0.0f) acc += noise_std * philox_randn(seed, static_cast<uint64_t>(idx));
      int64_t off = t - ss[v * kLeads + l];
      off += off < 0 ? n : 0;
      out[idx] = static_cast<out_t>(off < mask_length ? 0.0f : acc);
    }
  }
}

template <typename in_t, typename out_t>
void launch(const at::Tensor& x, const float* gain, const float* base, const at::Tensor& m, const at::Tensor& starts,
            at::Tensor& out, int64_t mask_length, double noise_std, int64_t seed) {
  const int64_t batch = x.size(0), n = x.size(2), n_tblocks = (n + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned int>(batch * n_tblocks));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const float ns = static_cast<float>(noise_std);
  const uint64_t key = static_cast<uint64_t>(seed);
  if (m.size(0) == 2) {
    vcg_augment_cuda_kernel<in_t, out_t, 2><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<in_t>(), x.stride(0), x.stride(1), x.stride(2), gain, base, m.data_ptr<float>(),
        starts.data_ptr<int64_t>(), out.data_ptr<out_t>(), batch, n, n_tblocks, mask_length, ns, key);
  } else {
    vcg_augment_cuda_kernel<in_t, out_t, 1><<<grid, kThreads, 0, stream>>>(
        x.data_ptr<in_t>(), x.stride(0), x.stride(1), x.stride(2), gain, base, m.data_ptr<float>(),
        starts.data_ptr<int64_t>(), out.data_ptr<out_t>(), batch, n, n_tblocks, mask_length, ns, key);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename in_t>
void dispatch_out(const at::Tensor& x, const float* gain, const float* base, const at::Tensor& m,
                  const at::Tensor& starts, at::Tensor& out, int64_t mask_length, double noise_std, int64_t seed) {
  if (out.scalar_type() == at::kFloat) {
    launch<in_t, float>(x, gain, base, m, starts, out, mask_length, noise_std, seed);
  } else {
    launch<in_t, at::BFloat16>(x, gain, base, m, starts, out, mask_length, noise_std, seed);
  }
}

at::Tensor vcg_augment_cuda(const at::Tensor& x, const std::optional<at::Tensor>& gain,
                            const std::optional<at::Tensor>& baseline, const at::Tensor& matrices,
                            const at::Tensor& mask_starts, int64_t mask_length, double noise_std, int64_t noise_seed,
                            at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cuda(), "vcg_augment (CUDA): x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 3 && x.size(1) == kLeads && x.size(0) >= 1 && x.size(2) >= 1,
              "vcg_augment: x must be (B, 8, T) with B, T >= 1, got ", x.sizes());
  const int64_t batch = x.size(0), n = x.size(2);
  TORCH_CHECK(matrices.dim() == 4 && (matrices.size(0) == 1 || matrices.size(0) == 2) && matrices.size(1) == batch &&
                  matrices.size(2) == kLeads && matrices.size(3) == kLeads,
              "vcg_augment: matrices must be (V, B, 8, 8) with V in {1, 2}, got ", matrices.sizes());
  const int64_t nv = matrices.size(0);
  TORCH_CHECK(mask_starts.dim() == 3 && mask_starts.size(0) == nv && mask_starts.size(1) == batch &&
                  mask_starts.size(2) == kLeads,
              "vcg_augment: mask_starts must be (V, B, 8), got ", mask_starts.sizes());
  TORCH_CHECK(mask_length >= 0 && mask_length <= n, "vcg_augment: mask_length must be in [0, T], got ", mask_length);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "vcg_augment: out_dtype must be float32 or "
              "bfloat16, got ", out_dtype);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto m = matrices.to(x.device(), at::kFloat).contiguous();
  const auto starts = mask_starts.to(x.device(), at::kLong).contiguous();
  auto out = at::empty({nv, batch, kLeads, n}, x.options().dtype(out_dtype));
  const bool is_int = x.scalar_type() == at::kShort;
  at::Tensor g, q0;
  if (is_int) {
    TORCH_CHECK(gain.has_value() && baseline.has_value(), "vcg_augment: int16 x needs gain and baseline");
    g = gain->to(x.device(), at::kFloat).contiguous();
    q0 = baseline->to(x.device(), at::kFloat).contiguous();
    TORCH_CHECK(g.numel() == batch && q0.numel() == batch, "vcg_augment: gain and baseline must be (B,)");
  }
  const float* gp = is_int ? g.data_ptr<float>() : nullptr;
  const float* bp = is_int ? q0.data_ptr<float>() : nullptr;
  switch (x.scalar_type()) {
    case at::kShort: dispatch_out<int16_t>(x, gp, bp, m, starts, out, mask_length, noise_std, noise_seed); break;
    case at::kFloat: dispatch_out<float>(x, gp, bp, m, starts, out, mask_length, noise_std, noise_seed); break;
    case at::kHalf: dispatch_out<at::Half>(x, gp, bp, m, starts, out, mask_length, noise_std, noise_seed); break;
    case at::kBFloat16:
      dispatch_out<at::BFloat16>(x, gp, bp, m, starts, out, mask_length, noise_std, noise_seed);
      break;
    default: TORCH_CHECK(false, "vcg_augment: x must be int16, float16, bfloat16 or float32, got ", x.scalar_type());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ecgfast, CUDA, m) { m.impl("vcg_augment", &vcg_augment_cuda); }

}  // namespace ecgfast
