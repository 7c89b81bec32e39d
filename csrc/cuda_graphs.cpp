// The CUDA part of tttnn's C++ shim: CUDA graphs of whole training and scoring steps (issue #24).
// Built by build.rs as its own shared library against the CUDA torch wheel's headers and libraries
// (libtorch_cuda, libc10_cuda, cudart), and loaded with dlopen only when a run asks for CUDA graphs
// on a CUDA device: the tttnn binary itself links the CPU libtorch and runs where no CUDA exists.
// Errors cross into Rust as malloc'd messages (freed with tttnn_graphs_free_message), never as
// C++ exceptions unwinding through Rust frames.
#include <ATen/Context.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <string>

namespace {

char* message(const std::string& what) {
  char* m = static_cast<char*>(std::malloc(what.size() + 1));
  if (m != nullptr) std::memcpy(m, what.c_str(), what.size() + 1);
  return m;
}

template <typename F>
char* guarded(const char* what, F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(std::string(what) + ": " + e.what());
  } catch (...) {
    return message(std::string(what) + ": unknown C++ exception");
  }
}

// A side stream made current for a capture (capture refuses the legacy default stream), ordered
// after the work already queued on the stream it replaces and before the work queued after it.
struct SideStream {
  c10::cuda::CUDAStream original;
  c10::cuda::CUDAStream side;
  c10::cuda::CUDAStreamGuard guard;
  SideStream(c10::cuda::CUDAStream original, c10::cuda::CUDAStream side)
      : original(original), side(side), guard(side) {}
};

}  // namespace

extern "C" {

// The interface version Rust checks after dlopen: a stale shim is refused, not misused.
uint32_t tttnn_graphs_abi() { return 2; }

void tttnn_graphs_free_message(char* m) { std::free(m); }

// Leaves cuDNN out of scaled_dot_product_attention's choice for the rest of the process: its
// attention has had CUDA-graph capture bugs, while flash and memory-efficient attention keep their
// RNG state on the device and capture cleanly (PyTorch's own advice for captured attention).
char* tttnn_graphs_sdpa_without_cudnn() {
  return guarded("setSDPUseCuDNN", [] { at::globalContext().setSDPUseCuDNN(false); });
}

// A new memory pool id that graphs captured with it share (graphs that never run at once may).
char* tttnn_graphs_pool(uint64_t* first, uint64_t* second) {
  return guarded("graph_pool_handle", [&] {
    auto id = at::cuda::graph_pool_handle();
    *first = id.first;
    *second = id.second;
  });
}

// Makes a pool stream of `device` current, after the current stream's queued work.
char* tttnn_graphs_side_stream_enter(int8_t device, void** out) {
  return guarded("side stream", [&] {
    auto original = c10::cuda::getCurrentCUDAStream(device);
    auto side = c10::cuda::getStreamFromPool(false, device);
    c10::cuda::CUDAEvent ready;
    ready.record(original);
    ready.block(side);
    *out = new SideStream(original, side);
  });
}

// Restores the stream `enter` replaced, ordered after the side stream's work; frees the handle.
char* tttnn_graphs_side_stream_exit(void* handle) {
  auto* s = static_cast<SideStream*>(handle);
  char* err = guarded("side stream exit", [&] {
    c10::cuda::CUDAEvent done;
    done.record(s->side);
    done.block(s->original);
  });
  delete s;
  return err;
}

// A graph, kept after capture so its nodes can be counted before it is instantiated.
char* tttnn_graphs_new(void** out) {
  return guarded("CUDAGraph", [&] { *out = new at::cuda::CUDAGraph(/*keep_graph=*/true); });
}

void tttnn_graphs_delete(void* graph) { delete static_cast<at::cuda::CUDAGraph*>(graph); }

// Starts capturing the current (side) stream's work into `graph`, allocating from the pool.
char* tttnn_graphs_capture_begin(void* graph, uint64_t first, uint64_t second) {
  return guarded("capture_begin", [&] {
    static_cast<at::cuda::CUDAGraph*>(graph)->capture_begin(
        {static_cast<c10::CaptureId_t>(first), static_cast<c10::CaptureId_t>(second)},
        cudaStreamCaptureModeGlobal);
  });
}

// Ends the capture, counts the graph's nodes into `nodes` and instantiates it.
char* tttnn_graphs_capture_end(void* graph, uint64_t* nodes) {
  return guarded("capture_end", [&] {
    auto* g = static_cast<at::cuda::CUDAGraph*>(graph);
    g->capture_end();
    size_t n = 0;
    auto status = cudaGraphGetNodes(g->raw_cuda_graph(), nullptr, &n);
    if (status != cudaSuccess) {
      throw std::runtime_error(std::string("cudaGraphGetNodes: ") + cudaGetErrorString(status));
    }
    *nodes = n;
    g->instantiate();
  });
}

// Launches the whole captured graph on the current stream.
char* tttnn_graphs_replay(void* graph) {
  return guarded("replay", [&] { static_cast<at::cuda::CUDAGraph*>(graph)->replay(); });
}

}  // extern "C"
