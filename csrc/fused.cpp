// The part of tttnn's C++ shim that every build has (compiled by build.rs against the libtorch
// headers torch-sys builds with, linked into the binary): libtorch ops tch 0.24 does not bind.
// Errors cross into Rust as messages (a malloc'd string the caller frees with tttnn_shim_free),
// never as C++ exceptions unwinding through Rust frames.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <vector>

namespace {

char* message(const char* what) {
  char* m = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (m != nullptr) std::strcpy(m, what);
  return m;
}

std::vector<at::Tensor> list(at::Tensor* const* tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

std::optional<at::Tensor> maybe(const at::Tensor* t) {
  if (t == nullptr) return std::nullopt;
  return *t;
}

}  // namespace

extern "C" {

// Frees a message returned by a shim function.
void tttnn_shim_free(char* m) { std::free(m); }

// torch.optim.AdamW(fused=True)'s update of `n` parameter tensors (libtorch's _fused_adamw_: one
// kernel over all of them, CPU or CUDA): decoupled weight decay, both moments, bias correction by
// each tensor's own step count (`steps`, 0-d float tensors on the parameters' device, already
// holding the step being taken). The learning rate is `lr`, or `lr_tensor` when not null (a 0-d
// tensor: on the CPU read as a double; on the parameters' CUDA device an fp32 the kernel reads
// there, so a captured graph takes whatever rate the tensor holds at replay). `grad_scale`
// (nullable) divides the gradients first; `found_inf` (nullable, nonzero) skips the whole update
// on the device, without a host sync. Returns null, or the error message.
char* tttnn_fused_adamw(at::Tensor* const* params, at::Tensor* const* grads,
                        at::Tensor* const* exp_avgs, at::Tensor* const* exp_avg_sqs,
                        at::Tensor* const* steps, size_t n, double lr, const at::Tensor* lr_tensor,
                        double beta1, double beta2, double weight_decay, double eps,
                        const at::Tensor* grad_scale, const at::Tensor* found_inf) {
  try {
    if (lr_tensor != nullptr) {
      at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                        {}, list(steps, n), *lr_tensor, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false, maybe(grad_scale),
                        maybe(found_inf));
    } else {
      at::_fused_adamw_(list(params, n), list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n),
                        {}, list(steps, n), lr, beta1, beta2, weight_decay, eps,
                        /*amsgrad=*/false, /*maximize=*/false, maybe(grad_scale),
                        maybe(found_inf));
    }
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in _fused_adamw_");
  }
}

// `host` (a CPU tensor) as a new tensor on CUDA device `device`, copied without a host sync: staged
// in pinned memory and copied with non_blocking, so the host goes on queueing work while earlier
// steps run (a copy from pageable memory waits for the stream: libtorch's copy synchronizes after
// it). libtorch's pinned allocator keeps the staging block until the copy has run. Writes the new
// tensor (to be freed as any tch tensor) to `out`; returns null, or the error message.
char* tttnn_upload(const at::Tensor* host, int device, at::Tensor** out) {
  try {
    at::Device cuda(at::kCUDA, static_cast<c10::DeviceIndex>(device));
    *out = new at::Tensor(host->pin_memory().to(cuda, host->scalar_type(), /*non_blocking=*/true));
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in an upload to CUDA");
  }
}

}  // extern "C"
