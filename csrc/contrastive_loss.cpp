// Blockwise CPU forward and backward of the row log-sum-exp behind the fused multi-positive contrastive loss.
//
// x (N, d) float32/float64 holds the keys; the queries are rows [offset, offset + n_rows). For query i,
//   lse_i = log sum_{a allowed(i, a)} exp(x_i . x_a / tau),  allowed(i, a) = a != i [&& view[a] != view[i]].
// Forward: each task takes kBlockM query rows and walks the keys kBlockN at a time; a (kBlockM, kBlockN) tile of
// similarities comes from at::mm_out (into one preallocated tile per task) and feeds an online max-shifted log-sum-exp. Backward (grad g (n_rows,)):
//   dk pass: per block of keys, over query tiles: dx_a += sum_i g_i P_ia x_i / tau
//   dq pass: per block of queries, over key tiles: dx_i += sum_a g_i P_ia x_a / tau
// with P_ia = exp(s_ia - lse_i) recomputed from the saved lse. Each task owns its output rows, so no atomics; the
// extra memory is a few tiles per thread: O(N d) overall. Rows with lse = -inf (no allowed key) get P = 0.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kBlockM = 64;   // query rows per task and tile
constexpr int64_t kBlockN = 256;  // key rows per tile

struct Problem {
  at::Tensor x;      // (N, d) contiguous, float or double
  at::Tensor views;  // (N,) int64 contiguous, or undefined
  int64_t n_keys, offset, n_rows;
  double inv_tau;
};

Problem make_problem(const at::Tensor& x_in, const std::optional<at::Tensor>& view_ids, int64_t offset,
                     int64_t n_rows, double temperature) {
  TORCH_CHECK(x_in.dim() == 2, "mp_contrastive_lse: x must be (N, d), got ", x_in.sizes());
  TORCH_CHECK(x_in.device().is_cpu(), "mp_contrastive_lse: the C++ kernel runs on CPU tensors");
  TORCH_CHECK(temperature > 0, "mp_contrastive_lse: temperature must be > 0");
  const int64_t n = x_in.size(0);
  TORCH_CHECK(offset >= 0 && n_rows >= 0 && offset + n_rows <= n, "mp_contrastive_lse: query rows [", offset, ", ",
              offset + n_rows, ") outside the ", n, " keys");
  Problem p;
  // detached: the tile products inside must never be recorded by autograd (they would keep every tile alive)
  const at::Tensor x = x_in.detach();
  p.x = x.scalar_type() == at::kDouble ? x.contiguous() : x.to(at::kFloat).contiguous();
  if (view_ids.has_value() && view_ids->defined()) {
    TORCH_CHECK(view_ids->dim() == 1 && view_ids->size(0) == n, "mp_contrastive_lse: view_ids must be (N,)");
    p.views = view_ids->to(at::kLong).contiguous();
  }
  p.n_keys = n;
  p.offset = offset;
  p.n_rows = n_rows;
  p.inv_tau = 1.0 / temperature;
  return p;
}

inline bool allowed(const int64_t* v, int64_t i, int64_t a) { return a != i && (v == nullptr || v[a] != v[i]); }

template <typename T>
void lse_forward(const Problem& p, T* lse) {
  const int64_t blocks = (p.n_rows + kBlockM - 1) / kBlockM;
  const int64_t* v = p.views.defined() ? p.views.data_ptr<int64_t>() : nullptr;
  const T inv_tau = static_cast<T>(p.inv_tau);
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> m(kBlockM), l(kBlockM);
    at::Tensor buf = at::empty({kBlockM * kBlockN}, p.x.options());  // one tile, reused: no allocation per tile
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * kBlockM, mr = std::min(kBlockM, p.n_rows - r0);
      const at::Tensor q = p.x.narrow(0, p.offset + r0, mr);
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t c0 = 0; c0 < p.n_keys; c0 += kBlockN) {
        const int64_t nc = std::min(kBlockN, p.n_keys - c0);
        at::Tensor s = buf.narrow(0, 0, mr * nc).view({mr, nc});  // (mr, nc) similarities * tau
        at::mm_out(s, q, p.x.narrow(0, c0, nc).t());
        const T* sp = s.data_ptr<T>();
        for (int64_t r = 0; r < mr; ++r) {
          const int64_t i = p.offset + r0 + r;
          const T* row = sp + r * nc;
          T tile_max = neg_inf;
          for (int64_t j = 0; j < nc; ++j) {
            if (allowed(v, i, c0 + j)) tile_max = std::max(tile_max, row[j] * inv_tau);
          }
          if (tile_max == neg_inf) continue;  // nothing allowed in this tile
          const T m_new = std::max(m[r], tile_max);
          T sum = 0;
          for (int64_t j = 0; j < nc; ++j) {
            if (allowed(v, i, c0 + j)) sum += std::exp(row[j] * inv_tau - m_new);
          }
          l[r] = l[r] * std::exp(m[r] - m_new) + sum;  // exp(-inf) = 0 on the first allowed tile
          m[r] = m_new;
        }
      }
      for (int64_t r = 0; r < mr; ++r) lse[r0 + r] = l[r] > 0 ? m[r] + std::log(l[r]) : neg_inf;
    }
  });
}

// ds[r, j] = g_r exp(s[r, j] / tau - lse_r) for allowed (query i_r, key a_j), 0 otherwise, in place on s.
// rows_are_queries: s is (queries, keys); otherwise s is (keys, queries) (the dk pass).
template <typename T>
void softmax_grad_tile(T* s, int64_t rows, int64_t cols, bool rows_are_queries, int64_t q0, int64_t k0,
                       const Problem& p, const T* lse, const T* g, const int64_t* v) {
  const T inv_tau = static_cast<T>(p.inv_tau);
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t qi = rows_are_queries ? q0 + r : q0 + c;  // local query row
      const int64_t a = rows_are_queries ? k0 + c : k0 + r;   // key row
      const int64_t i = p.offset + qi;
      const T gi = g[qi];
      if (gi == T(0) || std::isinf(lse[qi]) || !allowed(v, i, a)) {
        row[c] = 0;
      } else {
        row[c] = gi * std::exp(row[c] * inv_tau - lse[qi]);
      }
    }
  }
}

template <typename T>
void lse_backward(const Problem& p, const T* g, const T* lse, at::Tensor& dx) {
  const int64_t* v = p.views.defined() ? p.views.data_ptr<int64_t>() : nullptr;
  // dk pass: each task owns kBlockM key rows of dx
  const int64_t key_blocks = (p.n_keys + kBlockM - 1) / kBlockM;
  at::parallel_for(0, key_blocks, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor buf = at::empty({kBlockM * kBlockN}, p.x.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t k0 = b * kBlockM, nk = std::min(kBlockM, p.n_keys - k0);
      const at::Tensor k = p.x.narrow(0, k0, nk);
      at::Tensor dk = dx.narrow(0, k0, nk);
      for (int64_t q0 = 0; q0 < p.n_rows; q0 += kBlockN) {
        const int64_t mq = std::min(kBlockN, p.n_rows - q0);
        const at::Tensor q = p.x.narrow(0, p.offset + q0, mq);
        at::Tensor s_t = buf.narrow(0, 0, nk * mq).view({nk, mq});
        at::mm_out(s_t, k, q.t());
        softmax_grad_tile<T>(s_t.data_ptr<T>(), nk, mq, false, q0, k0, p, lse, g, v);
        dk.addmm_(s_t, q, 1.0, p.inv_tau);
      }
    }
  });
  // dq pass: each task owns kBlockM query rows of dx (after the dk pass, so no overlap in time)
  const int64_t query_blocks = (p.n_rows + kBlockM - 1) / kBlockM;
  at::parallel_for(0, query_blocks, 1, [&](int64_t b0, int64_t b1) {
    at::Tensor buf = at::empty({kBlockM * kBlockN}, p.x.options());
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t q0 = b * kBlockM, mq = std::min(kBlockM, p.n_rows - q0);
      const at::Tensor q = p.x.narrow(0, p.offset + q0, mq);
      at::Tensor dq = dx.narrow(0, p.offset + q0, mq);
      for (int64_t k0 = 0; k0 < p.n_keys; k0 += kBlockN) {
        const int64_t nk = std::min(kBlockN, p.n_keys - k0);
        const at::Tensor k = p.x.narrow(0, k0, nk);
        at::Tensor s = buf.narrow(0, 0, mq * nk).view({mq, nk});
        at::mm_out(s, q, k.t());
        softmax_grad_tile<T>(s.data_ptr<T>(), mq, nk, true, q0, k0, p, lse, g, v);
        dq.addmm_(s, k, 1.0, p.inv_tau);
      }
    }
  });
}

at::Tensor mp_contrastive_lse_fwd(const at::Tensor& x, const std::optional<at::Tensor>& view_ids, int64_t offset,
                                  int64_t n_rows, double temperature) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem(x, view_ids, offset, n_rows, temperature);
  at::Tensor lse = at::empty({n_rows}, p.x.options());
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "mp_contrastive_lse_fwd",
                             [&] { lse_forward<scalar_t>(p, lse.data_ptr<scalar_t>()); });
  return lse;
}

at::Tensor mp_contrastive_lse_bwd(const at::Tensor& grad_lse, const at::Tensor& x,
                                  const std::optional<at::Tensor>& view_ids, const at::Tensor& lse, int64_t offset,
                                  int64_t n_rows, double temperature) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem(x, view_ids, offset, n_rows, temperature);
  TORCH_CHECK(grad_lse.numel() == n_rows && lse.numel() == n_rows,
              "mp_contrastive_lse_bwd: grad_lse and lse must have n_rows elements");
  const at::Tensor g = grad_lse.detach().to(p.x.scalar_type()).contiguous();
  const at::Tensor l = lse.detach().to(p.x.scalar_type()).contiguous();
  at::Tensor dx = at::zeros_like(p.x);
  AT_DISPATCH_FLOATING_TYPES(p.x.scalar_type(), "mp_contrastive_lse_bwd",
                             [&] { lse_backward<scalar_t>(p, g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), dx); });
  return dx;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ecgfast, m) {
  m.def("mp_contrastive_lse_fwd(Tensor x, Tensor? view_ids, int offset, int n_rows, float temperature) -> Tensor");
  m.def(
      "mp_contrastive_lse_bwd(Tensor grad_lse, Tensor x, Tensor? view_ids, Tensor lse, int offset, int n_rows, "
      "float temperature) -> Tensor");
}

TORCH_LIBRARY_IMPL(ecgfast, CPU, m) {
  m.impl("mp_contrastive_lse_fwd", &mp_contrastive_lse_fwd);
  m.impl("mp_contrastive_lse_bwd", &mp_contrastive_lse_bwd);
}
