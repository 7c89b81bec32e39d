//! CUDA graphs of whole training steps (issue #24): a step for one chunk length is captured once per
//! run and replayed as one launch per chunk, instead of the ≈1,500 kernel launches libtorch's
//! dispatcher makes for a GPT-2 step (on an H200 the host's launching was 21 ms of a step whose GPU
//! work is ≈3 ms: docs/benchmarks.md).
//!
//! tch 0.24 binds no graph or stream API, so this goes through the CUDA part of the C++ shim
//! (`csrc/cuda_graphs.cpp`, built by build.rs against the CUDA torch wheel), loaded with dlopen only
//! when a run asks for graphs on a CUDA device: the binary still runs where no CUDA exists.
//!
//! What a captured step needs, and how it gets it:
//! - fixed addresses: each length bucket has static token and label buffers the chunk is copied
//!   into (right-padded, the padding's labels ignored, so the mean loss is the chunk's own: causal
//!   attention keeps padding out of the real positions);
//! - no host scalars that change: the step counts the bias correction reads live on the device
//!   ([`super::AdamW`]'s `step_counts`), incremented inside the graph unless the step is skipped;
//! - no host sync inside: a non-finite loss or gradient norm skips the update on the device (fused
//!   AdamW's `found_inf`), and the loss and the skip flag are read after the replay;
//! - a side stream (capture refuses the default stream), warmed up there before capture with the
//!   update skipped, so warm-up changes no weight.
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Whether training steps run as captured CUDA graphs: recorded with the run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CudaGraphs {
    /// Every kernel launched by libtorch, one by one (as before #24).
    #[default]
    Off,
    /// Each chunk length's step captured once and replayed (CUDA only; single-document runs).
    On,
}

/// The interface version of `csrc/cuda_graphs.cpp` this code speaks.
const ABI: u32 = 1;

type Message = *mut c_char;

/// The shim's functions, resolved once per process.
struct Shim {
    free_message: unsafe extern "C" fn(Message),
    pool: unsafe extern "C" fn(*mut u64, *mut u64) -> Message,
    side_enter: unsafe extern "C" fn(i8, *mut *mut c_void) -> Message,
    side_exit: unsafe extern "C" fn(*mut c_void) -> Message,
    new_graph: unsafe extern "C" fn(*mut *mut c_void) -> Message,
    delete_graph: unsafe extern "C" fn(*mut c_void),
    capture_begin: unsafe extern "C" fn(*mut c_void, u64, u64) -> Message,
    capture_end: unsafe extern "C" fn(*mut c_void, *mut u64) -> Message,
    replay: unsafe extern "C" fn(*mut c_void) -> Message,
}

// SAFETY: the shim's functions are plain C entry points; libtorch serialises what needs it.
unsafe impl Send for Shim {}
unsafe impl Sync for Shim {}

/// Where the shim is: `TTTNN_CUDA_GRAPHS_SHIM` at run time (a kit carried to a GPU machine), else
/// the library this build made.
fn shim_path() -> std::result::Result<String, String> {
    if let Ok(p) = std::env::var("TTTNN_CUDA_GRAPHS_SHIM") {
        return Ok(p);
    }
    match option_env!("TTTNN_CUDA_GRAPHS_SHIM") {
        Some(p) => Ok(p.to_string()),
        None => Err(format!(
            "this tttnn was built without the CUDA graph shim ({})",
            option_env!("TTTNN_CUDA_GRAPHS_SHIM_MISSING").unwrap_or("reason not recorded")
        )),
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns a thread-local C string or null.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// A symbol's address as the function type `F` it has (the caller names it).
///
/// # Safety
/// `p` must be a function of type `F`.
unsafe fn func<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    std::mem::transmute_copy::<*mut c_void, F>(&p)
}

fn load() -> std::result::Result<Shim, String> {
    let path = shim_path()?;
    let name = CString::new(path.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("cannot load {path}: {}", dlerror()));
    }
    let sym = |s: &str| -> std::result::Result<*mut c_void, String> {
        let c = CString::new(s).expect("a symbol name has no NUL");
        // SAFETY: dlsym on a live handle with a valid C string.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(format!("{path} has no {s}: {}", dlerror()))
        } else {
            Ok(p)
        }
    };
    // SAFETY: each symbol is the extern "C" function of csrc/cuda_graphs.cpp with this signature;
    // the ABI version is checked before any other is called.
    unsafe {
        let abi: unsafe extern "C" fn() -> u32 = func(sym("tttnn_graphs_abi")?);
        if abi() != ABI {
            return Err(format!(
                "{path} speaks interface {}, this tttnn {ABI}: rebuild it",
                abi()
            ));
        }
        Ok(Shim {
            free_message: func(sym("tttnn_graphs_free_message")?),
            pool: func(sym("tttnn_graphs_pool")?),
            side_enter: func(sym("tttnn_graphs_side_stream_enter")?),
            side_exit: func(sym("tttnn_graphs_side_stream_exit")?),
            new_graph: func(sym("tttnn_graphs_new")?),
            delete_graph: func(sym("tttnn_graphs_delete")?),
            capture_begin: func(sym("tttnn_graphs_capture_begin")?),
            capture_end: func(sym("tttnn_graphs_capture_end")?),
            replay: func(sym("tttnn_graphs_replay")?),
        })
    }
}

/// The shim, loaded on first use; a failure is kept and given to every caller.
fn shim() -> Result<&'static Shim> {
    static SHIM: OnceLock<std::result::Result<Shim, String>> = OnceLock::new();
    SHIM.get_or_init(load)
        .as_ref()
        .map_err(|why| Error::Library {
            library: "the CUDA graph shim",
            message: format!("--cuda-graphs on: {why}"),
        })
}

impl Shim {
    /// `Ok` for a null message, else the message as an error (freed).
    fn check(&self, m: Message) -> Result<()> {
        if m.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated string the shim allocated; freed once.
        let text = unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned();
        unsafe { (self.free_message)(m) };
        Err(Error::internal(format!("CUDA graphs: {text}")))
    }
}

/// Checks that graphs can run here: a CUDA device and a shim that loads. A clear error otherwise.
pub fn check(device: Device) -> Result<()> {
    if !device.is_cuda() {
        return Err(Error::setting(
            "cuda_graphs",
            "--cuda-graphs on needs --device cuda (CUDA graphs capture GPU work)",
        ));
    }
    shim().map(|_| ())
}

/// A side stream made current for a capture; the stream it replaced is current again on drop,
/// ordered after the side stream's work.
struct SideStream {
    shim: &'static Shim,
    handle: *mut c_void,
}

impl SideStream {
    fn enter(shim: &'static Shim, device: Device) -> Result<Self> {
        let Device::Cuda(index) = device else {
            return Err(Error::internal("a side stream needs a CUDA device"));
        };
        let mut handle = std::ptr::null_mut();
        // SAFETY: `handle` is written by the shim on success.
        shim.check(unsafe { (shim.side_enter)(index as i8, &mut handle) })?;
        Ok(Self { shim, handle })
    }

    fn exit(mut self) -> Result<()> {
        let handle = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        // SAFETY: a handle from side_enter, exited once.
        self.shim.check(unsafe { (self.shim.side_exit)(handle) })
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: as in `exit`; an error on this path (another error is already on its way)
            // is dropped.
            let m = unsafe { (self.shim.side_exit)(self.handle) };
            let _ = self.shim.check(m);
        }
    }
}

/// One captured CUDA graph.
struct Graph {
    shim: &'static Shim,
    handle: *mut c_void,
    /// Kernel and copy nodes in the graph.
    nodes: u64,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: a handle from new_graph, deleted once.
        unsafe { (self.shim.delete_graph)(self.handle) }
    }
}

/// One chunk length's captured step and the static buffers it reads and writes.
struct Bucket {
    /// Token positions (a chunk of up to this many tokens is right-padded to it).
    len: i64,
    /// `[2, len]` int64: the chunk's tokens, then its labels (ignored past the chunk).
    inputs: Tensor,
    /// `[2]` fp32 written by the step: the chunk's mean loss, and 1 where the update was skipped.
    out: Tensor,
    graph: Option<Graph>,
}

/// What one replay gave: the loss, and whether the update was skipped (non-finite loss or norm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replayed {
    /// The chunk's mean next-token loss.
    pub loss: f64,
    /// The loss or the gradient norm was NaN or infinite: no update, no step counted.
    pub skipped: bool,
}

/// Capture statistics of one bucket, for benchmarks and the device check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BucketStats {
    /// Token positions of the bucket.
    pub len: i64,
    /// Nodes of its graph.
    pub nodes: u64,
}

/// The captured steps of one run, one graph per length bucket, all in one memory pool (they never
/// run at once).
pub struct GraphedSteps {
    shim: &'static Shim,
    device: Device,
    pool: (u64, u64),
    buckets: Vec<Bucket>,
    /// `[]` fp32: 1 while warming up (the update is skipped), 0 when capturing and replaying.
    skip: Tensor,
    ignore_index: i64,
}

/// The buckets for chunks of up to `max_length` tokens: multiples of `max_length / 4` rounded up to
/// 64 positions (256, 512, 768, 1024 for GPT-2).
pub(super) fn bucket_lengths(max_length: usize) -> Vec<i64> {
    let max = max_length as i64;
    let mut lens: Vec<i64> = (1..=4)
        .map(|q| ((max * q / 4 + 63) / 64 * 64).min(max))
        .collect();
    lens.dedup();
    lens
}

/// A bucket's `[2, len]` inputs for `chunk` (at least 2 tokens, at most `len`): the tokens
/// right-padded with token 0, then the labels (the next token) with `ignore_index` from the chunk's
/// last token on, so the mean loss is over the chunk's own targets.
pub(super) fn bucket_inputs(chunk: &[i64], len: usize, ignore_index: i64) -> Vec<i64> {
    let mut host = vec![0i64; 2 * len];
    host[..chunk.len()].copy_from_slice(chunk);
    let labels = &mut host[len..];
    labels[..chunk.len() - 1].copy_from_slice(&chunk[1..]);
    labels[chunk.len() - 1..].fill(ignore_index);
    host
}

/// Warm-up runs of a step on the side stream before its capture (cuBLAS handles and workspaces,
/// autograd's state: what PyTorch's whole-network capture example warms up).
const WARMUP: usize = 3;

impl GraphedSteps {
    /// Buckets of `max_length / 4` multiples (rounded up to 64 positions) for chunks of up to
    /// `max_length` tokens on `device`.
    pub fn new(device: Device, max_length: usize, ignore_index: i64) -> Result<Self> {
        check(device)?;
        let shim = shim()?;
        let mut pool = (0, 0);
        // SAFETY: both outputs are written by the shim on success.
        shim.check(unsafe { (shim.pool)(&mut pool.0, &mut pool.1) })?;
        let buckets = bucket_lengths(max_length)
            .into_iter()
            .map(|len| Bucket {
                len,
                inputs: Tensor::zeros([2, len], (Kind::Int64, device)),
                out: Tensor::zeros([2], (Kind::Float, device)),
                graph: None,
            })
            .collect();
        Ok(Self {
            shim,
            device,
            pool,
            buckets,
            skip: Tensor::zeros([], (Kind::Float, device)),
            ignore_index,
        })
    }

    /// The flag a step's body passes to the update: nonzero skips it (warm-up).
    pub fn skip_flag(&self) -> &Tensor {
        &self.skip
    }

    /// Nodes of each bucket captured so far.
    pub fn stats(&self) -> Vec<BucketStats> {
        self.buckets
            .iter()
            .filter_map(|b| {
                b.graph.as_ref().map(|g| BucketStats {
                    len: b.len,
                    nodes: g.nodes,
                })
            })
            .collect()
    }

    /// Runs the step for `chunk` (its tokens): copies it into its bucket's buffers, captures the
    /// bucket's graph the first time (`body` records the step: given the `[1, len]` tokens and
    /// labels and the `[2]` output to fill), then replays it and reads its output (one sync).
    pub fn step(
        &mut self,
        chunk: &[i64],
        body: &mut dyn FnMut(&Tensor, &Tensor, &Tensor) -> Result<()>,
    ) -> Result<Replayed> {
        let n = chunk.len() as i64;
        let Some(i) = self.buckets.iter().position(|b| b.len >= n) else {
            return Err(Error::internal(format!(
                "a chunk of {n} tokens exceeds the largest graph bucket"
            )));
        };
        let len = self.buckets[i].len;
        let host = bucket_inputs(chunk, len as usize, self.ignore_index);
        self.buckets[i]
            .inputs
            .copy_(&Tensor::from_slice(&host).view([2, len]));
        if self.buckets[i].graph.is_none() {
            self.capture(i, body)?;
        }
        let b = &self.buckets[i];
        let g = b.graph.as_ref().expect("captured above");
        // SAFETY: a captured, instantiated graph.
        self.shim.check(unsafe { (self.shim.replay)(g.handle) })?;
        let out = Vec::<f32>::try_from(b.out.to_device(Device::Cpu))
            .map_err(|e| Error::internal(format!("reading a replayed step's loss: {e}")))?;
        Ok(Replayed {
            loss: out[0] as f64,
            skipped: out[1] != 0.0,
        })
    }

    fn capture(
        &mut self,
        i: usize,
        body: &mut dyn FnMut(&Tensor, &Tensor, &Tensor) -> Result<()>,
    ) -> Result<()> {
        let b = &self.buckets[i];
        let (ids, labels) = (b.inputs.get(0).unsqueeze(0), b.inputs.get(1).unsqueeze(0));
        let out = b.out.shallow_clone();
        let side = SideStream::enter(self.shim, self.device)?;
        let _ = self.skip.fill_(1.0);
        for _ in 0..WARMUP {
            body(&ids, &labels, &out)?;
        }
        let _ = self.skip.fill_(0.0);
        let mut handle = std::ptr::null_mut();
        // SAFETY: `handle` is written by the shim on success.
        self.shim
            .check(unsafe { (self.shim.new_graph)(&mut handle) })?;
        let mut graph = Graph {
            shim: self.shim,
            handle,
            nodes: 0,
        };
        // SAFETY: a new graph; capture on the current (side) stream.
        self.shim
            .check(unsafe { (self.shim.capture_begin)(graph.handle, self.pool.0, self.pool.1) })?;
        let recorded = body(&ids, &labels, &out);
        // The capture is ended whatever the body did, so the stream is usable again.
        // SAFETY: a graph in capture.
        let ended = self
            .shim
            .check(unsafe { (self.shim.capture_end)(graph.handle, &mut graph.nodes) });
        recorded?;
        ended?;
        side.exit()?;
        self.buckets[i].graph = Some(graph);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_max_length_and_pad_with_ignored_labels() {
        assert_eq!(bucket_lengths(1024), [256, 512, 768, 1024]);
        assert_eq!(bucket_lengths(2048), [512, 1024, 1536, 2048]);
        assert_eq!(bucket_lengths(24), [24]);
        assert_eq!(bucket_lengths(100), [64, 100]);
        assert_eq!(
            bucket_inputs(&[5, 6, 7], 5, -100),
            [5, 6, 7, 0, 0, 6, 7, -100, -100, -100]
        );
    }

    /// The captured step's body, run on the CPU without a capture, equals the eager step on chunks
    /// padded to a longer bucket: losses, weights and step counts (host and device); with the skip
    /// flag set (warm-up) nothing moves and no step counts.
    #[test]
    fn the_graph_body_equals_the_eager_step() {
        use crate::ttt::flat::tests::tiny_gpt2;
        use crate::ttt::{Chunk, ChunkStep, Dropout, TrainConfig, Trainer, IGNORE_INDEX};
        // The paper's lr: the key bias's gradients are rounding noise (softmax cancels them), which
        // AdamW scales to lr-sized steps, so at lr 1e-3 padding's other rounding shows as 1e-6.
        let c = TrainConfig {
            lr: 2e-5,
            max_length: 24,
            dropout: Dropout::Off,
            ..Default::default()
        };
        let chunks: Vec<Vec<i64>> = [24i64, 17, 9]
            .iter()
            .enumerate()
            .map(|(s, &n)| (0..n).map(|i| (i * 37 + s as i64 * 11) % 200 + 3).collect())
            .collect();
        let (eager_lm, body_lm) = (tiny_gpt2(), tiny_gpt2());
        let mut eager = Trainer::new(&eager_lm, c).unwrap();
        let mut body = Trainer::new(&body_lm, c).unwrap();
        // A bucket longer than every chunk: its padding must change nothing.
        let len = 32;
        let inputs = |chunk: &[i64]| {
            let t =
                Tensor::from_slice(&bucket_inputs(chunk, len, IGNORE_INDEX)).view([2, len as i64]);
            (t.get(0).unsqueeze(0), t.get(1).unsqueeze(0))
        };
        let flag = |v: f64| Tensor::from(v as f32);
        for chunk in &chunks {
            let ChunkStep::Trained(want) = eager
                .step(&eager_lm, &Chunk::Tokens(chunk.clone()))
                .unwrap()
            else {
                panic!("a finite chunk trains");
            };
            let (ids, labels) = inputs(chunk);
            let (loss, skipped) = body
                .device_step(&body_lm, &ids, &labels, &flag(0.0))
                .unwrap();
            assert_eq!(skipped.double_value(&[]), 0.0);
            body.opt.count_step();
            let got = loss.double_value(&[]);
            assert!(
                (got - want).abs() <= 1e-6 * want.abs(),
                "loss {got} vs eager {want}"
            );
        }
        let weights = |lm: &crate::lm::LanguageModel| {
            let mut v = lm.var_store().variables().into_iter().collect::<Vec<_>>();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let compare = |what: &str| {
            for ((name, a), (_, b)) in weights(&eager_lm).iter().zip(weights(&body_lm).iter()) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d <= 1e-6, "{what}: {name} differs by {d}");
            }
        };
        compare("after three steps");
        assert_eq!(body.opt.steps(), [3]);
        assert_eq!(body.opt.steps(), eager.opt.steps());
        assert_eq!(body.opt.step_counts.double_value(&[0]), 3.0);
        // Warm-up: the skip flag set, the weights and the count stay.
        let (ids, labels) = inputs(&chunks[0]);
        let (_, skipped) = body
            .device_step(&body_lm, &ids, &labels, &flag(1.0))
            .unwrap();
        assert_eq!(skipped.double_value(&[]), 1.0);
        compare("after a skipped step");
        assert_eq!(body.opt.step_counts.double_value(&[0]), 3.0);
    }

    #[test]
    fn graphs_on_the_cpu_are_a_clear_error() {
        let err = check(Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("cuda_graphs") && err.contains("--device cuda"),
            "{err}"
        );
        assert!(GraphedSteps::new(Device::Cpu, 1024, -100).is_err());
    }

    /// Without a CUDA libtorch on the loader's path (a CPU machine) the shim does not load, and
    /// says which library is missing instead of crashing.
    #[test]
    fn the_shim_missing_cuda_is_a_message_not_a_crash() {
        if std::env::var_os("TTTNN_LIBTORCH_LIB").is_some() {
            return; // a GPU machine's environment: the shim may well load there
        }
        let err = shim().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("CUDA graph shim")
                && (err.contains("libtorch_cuda") || err.contains("built without")),
            "{err}"
        );
    }
}
