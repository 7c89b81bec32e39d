//! CUDA graphs of whole training steps and scoring forwards: a step for one chunk length (one
//! document, or a round of lanes) is captured once per run and replayed as one launch per chunk,
//! instead of the ≈1,500 kernel launches libtorch's dispatcher makes for a GPT-2 step (on an H200
//! the host's launching dominated the eager step: docs/benchmarks.md, "GPU: the device check");
//! evaluation windows' forwards likewise.
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
//!   AdamW's `found_inf`); the loss and the skip flag are copied out of the bucket on the device
//!   after the replay and read with the rest of their pass's steps, once per evaluation point
//!   (the eager step takes the same body, so it needs no sync either);
//! - a side stream (capture refuses the default stream), warmed up there before capture with the
//!   update skipped, so warm-up changes no weight.
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::adamw::{lr_tensor, upload};
use super::{lane_losses, AdamW, Chunk, FlatWeights, Step, TrainConfig, IGNORE_INDEX};
use crate::error::{Error, Result};
use crate::lm::LanguageModel;

/// Whether training steps and scoring forwards run as captured CUDA graphs: recorded with the run.
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
    /// Every kernel launched by libtorch, one by one.
    #[default]
    Off,
    /// Each chunk length's step and each scored length's forward captured once and replayed
    /// (CUDA only).
    On,
}

/// The interface version of `csrc/cuda_graphs.cpp` this code speaks.
const ABI: u32 = 2;

type Message = *mut c_char;

/// The shim's functions, resolved once per process.
struct Shim {
    free_message: unsafe extern "C" fn(Message),
    sdpa_without_cudnn: unsafe extern "C" fn() -> Message,
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
            sdpa_without_cudnn: func(sym("tttnn_graphs_sdpa_without_cudnn")?),
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
    /// Token positions (a lane's chunk of up to this many tokens is right-padded to it).
    len: i64,
    /// `[2, lanes·rows, len]` int64: each lane's chunks' tokens (`rows` per lane, as many as a
    /// step holds), then their labels (ignored past a chunk, and in rows without one).
    inputs: Tensor,
    /// `[2, lanes]` fp32: each lane's target count (1 for a lane without one), then 1 for each
    /// lane that does not step this round.
    aux: Tensor,
    /// `[lanes]` fp32: each lane's learning rate this round (read only when steps have rates of
    /// their own, `TrainConfig::lr_varies`).
    lr: Tensor,
    /// `[2, lanes]` fp32 written by the step (the [`StepBuffers`]' `out`).
    out: Tensor,
    graph: Option<Graph>,
}

/// The static buffers a step's body reads and writes (views of its bucket's).
pub struct StepBuffers {
    /// `[lanes·rows, len]` tokens, a lane's `rows` chunks consecutive.
    pub ids: Tensor,
    /// `[lanes·rows, len]` labels, `IGNORE_INDEX` where a position has no target.
    pub labels: Tensor,
    /// `[lanes]` fp32 target counts over each lane's rows (1 for a lane without targets).
    pub targets: Tensor,
    /// `[lanes]` fp32: 1 for a lane that does not step this round, or for all while warming up.
    pub skip: Tensor,
    /// `[lanes]` each lane's learning rate this round (fp64 on the CPU, fp32 on CUDA); `None`:
    /// every lane takes `TrainConfig::lr` (the paper's constant rate).
    pub lr: Option<Tensor>,
    /// `[2, lanes]` fp32 the body writes: each lane's mean loss (0 for a lane without a chunk),
    /// then 1 where a lane did not step (its skip, or a non-finite loss or gradient norm: no
    /// update, no step counted).
    pub out: Tensor,
}

/// Capture statistics of one bucket, for benchmarks and the device check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BucketStats {
    /// Token positions of the bucket.
    pub len: i64,
    /// Nodes of its graph.
    pub nodes: u64,
    /// A scoring forward's graph (else a training step's).
    pub scoring: bool,
}

/// The rows of a captured step's buffers: its lanes (sets of weights), and the rows (chunks)
/// each lane's step may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Sets of weights (1: one document).
    pub lanes: usize,
    /// Chunks per step and lane (`--neighbors-per-step`; 1: the paper).
    pub per_lane: usize,
}

/// One lane's part of a round: its step's chunks with tokens (none, one, or up to
/// `--neighbors-per-step`), and whether it steps.
#[derive(Debug, Clone)]
pub struct LaneInput<'a> {
    /// Chunks of at least two tokens (none: an idle lane, or a zero-gradient step of one-token
    /// chunks).
    pub tokens: Vec<&'a [i64]>,
    /// Whether the lane's weights take an AdamW step this round.
    pub steps: bool,
}

impl<'a> LaneInput<'a> {
    /// A lane's part of a round from its step (`None`: the lane sits the round out): one-token
    /// chunks put no token through the model, and a step of skipped ones does not step.
    pub fn of(step: Option<&'a Step>) -> Self {
        let Some(step) = step else {
            return LaneInput {
                tokens: Vec::new(),
                steps: false,
            };
        };
        LaneInput {
            tokens: step
                .chunks
                .iter()
                .filter_map(|c| match c {
                    Chunk::Tokens(t) => Some(t.as_slice()),
                    Chunk::ZeroGrad | Chunk::Skipped => None,
                })
                .collect(),
            steps: step.updates(),
        }
    }
}

/// What one replayed round gave, still on the device: each lane's loss and skip, and the bucket
/// it ran in.
#[derive(Debug)]
pub struct ReplayedRound {
    /// `[2, lanes]` fp32: the bucket's [`StepBuffers`] `out`, copied on the device after the
    /// replay (the next replay overwrites the bucket's).
    pub out: Tensor,
    /// Token positions of the bucket (each row's computed positions).
    pub bucket_len: usize,
    /// Rows each lane computed (the chunks a step may hold, filled or not).
    pub rows: usize,
}

/// A training step's body as a CUDA graph captures it, everything on the device, on a round's
/// [`StepBuffers`] (each lane's chunks right-padded to the bucket, the padding's labels ignored):
/// each lane's mean loss over its rows' targets, one backward, then clipping and the fused update
/// of each set at its learning rate, skipped on the device where the buffers' skip flag is set or
/// a loss or gradient norm is not finite. Writes the losses and the skip flags used; the host's
/// step counts are the caller's to book. One body for one document (`[rows, len]` buffers, one
/// set of weights) and for lanes.
pub(super) fn train_body(
    weights: &mut FlatWeights,
    opt: &mut AdamW,
    dropout: bool,
    lm: &LanguageModel,
    b: &StepBuffers,
) -> Result<()> {
    weights.zero_grad();
    let losses = lane_losses(&lm.forward(&b.ids, dropout)?, &b.labels, &b.targets);
    losses.sum(Kind::Float).backward();
    let nonfinite = losses
        .isfinite()
        .logical_not()
        .to_kind(Kind::Float)
        .maximum(&b.skip);
    let skipped = opt.step(weights, &nonfinite, b.lr.as_ref())?;
    tch::no_grad(|| {
        b.out.get(0).copy_(&losses);
        b.out.get(1).copy_(&skipped);
    });
    Ok(())
}

/// The captured steps of one run, one graph per length bucket, all in one memory pool (they never
/// run at once).
pub struct GraphedSteps {
    shim: &'static Shim,
    device: Device,
    lanes: usize,
    /// Rows per lane of a training bucket: the most chunks a step holds.
    rows: usize,
    /// Whether steps take the learning rate of the bucket's `lr` buffer (a schedule) rather than
    /// the configured one.
    lr_varies: bool,
    pool: (u64, u64),
    buckets: Vec<Bucket>,
    /// The scoring forwards' buckets (the same lengths).
    eval_buckets: Vec<EvalBucket>,
    ignore_index: i64,
    /// Training replays so far, and the host's time on them: inputs built and copied, the
    /// launch (not the capture, not the wait for the GPU).
    replays: u64,
    replay_host: std::time::Duration,
}

/// The host's cost of replaying training steps, for benchmarks and the device check.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ReplayStats {
    /// Training steps replayed from a graph captured before them.
    pub replays: u64,
    /// Mean host time per replay (µs): inputs built and copied, and the launch.
    pub host_us_per_replay: f64,
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

/// A round's host-side inputs in a bucket of `rows` rows per lane of `len` positions:
/// `[2, lanes·rows, len]` tokens then labels (lane l's chunks in rows l·rows.., a row without a
/// chunk: token 0, every label ignored) and `[2, lanes]` target counts then skip flags.
pub(super) fn host_inputs(
    lanes: &[LaneInput],
    rows: usize,
    len: usize,
    ignore_index: i64,
) -> (Vec<i64>, Vec<f32>) {
    let n = lanes.len() * rows;
    let (mut ids, mut labels) = (vec![0i64; n * len], vec![ignore_index; n * len]);
    let (mut targets, mut skip) = (vec![1f32; lanes.len()], vec![0f32; lanes.len()]);
    for (l, lane) in lanes.iter().enumerate() {
        assert!(
            lane.tokens.len() <= rows,
            "a step holds at most {rows} chunks"
        );
        for (r, c) in lane.tokens.iter().enumerate() {
            let at = (l * rows + r) * len;
            let row = bucket_inputs(c, len, ignore_index);
            ids[at..at + len].copy_from_slice(&row[..len]);
            labels[at..at + len].copy_from_slice(&row[len..]);
        }
        if !lane.tokens.is_empty() {
            targets[l] = lane.tokens.iter().map(|c| c.len() - 1).sum::<usize>() as f32;
        }
        skip[l] = if lane.steps { 0.0 } else { 1.0 };
    }
    ids.extend_from_slice(&labels);
    targets.extend_from_slice(&skip);
    (ids, targets)
}

impl StepBuffers {
    /// The buffers of a round on `device` without a graph, `rows` rows per lane of `len`
    /// positions (the round's most chunks per lane and longest chunk, or a bucket's), each lane's
    /// learning rate `lr` when steps have their own: what an eager step runs the body on, and
    /// what a captured one reads.
    pub fn eager(
        lanes: &[LaneInput],
        rows: usize,
        len: usize,
        lr: Option<&[f64]>,
        ignore_index: i64,
        device: Device,
    ) -> Result<Self> {
        let n = lanes.len() as i64;
        let (ids, aux) = host_inputs(lanes, rows, len, ignore_index);
        let inputs =
            upload(Tensor::from_slice(&ids), device)?.view([2, n * rows as i64, len as i64]);
        let aux = upload(Tensor::from_slice(&aux), device)?.view([2, n]);
        Ok(StepBuffers {
            ids: inputs.get(0),
            labels: inputs.get(1),
            targets: aux.get(0),
            skip: aux.get(1),
            lr: lr.map(|v| lr_tensor(v, device)).transpose()?,
            out: Tensor::zeros([2, n], (Kind::Float, device)),
        })
    }
}

/// Warm-up runs of a step on the side stream before its capture (cuBLAS handles and workspaces,
/// autograd's state: what PyTorch's whole-network capture example warms up).
const WARMUP: usize = 3;

impl GraphedSteps {
    /// The captured steps a trainer of `lanes` lanes (1: one document) of `lm` under `config`
    /// has: `None` with `--cuda-graphs off`.
    pub(super) fn for_config(
        config: &TrainConfig,
        lm: &LanguageModel,
        lanes: usize,
    ) -> Result<Option<Self>> {
        match config.cuda_graphs {
            CudaGraphs::On => Self::new(
                lm.device(),
                Rows {
                    lanes,
                    per_lane: config.neighbors_per_step.max(1),
                },
                config.max_length,
                lm.n_ctx,
                IGNORE_INDEX,
            )
            .map(|g| Some(g.with_lr_buffer(config.lr_varies()))),
            CudaGraphs::Off => Ok(None),
        }
    }

    /// Steps read their learning rates from the bucket's buffer (`--lr-schedule`, a warm-up).
    fn with_lr_buffer(mut self, lr_varies: bool) -> Self {
        self.lr_varies = lr_varies;
        self
    }

    /// Buckets of `max_length / 4` multiples (rounded up to 64 positions) for `rows.lanes` lanes
    /// of up to `rows.per_lane` chunks of up to `max_length` tokens on `device`, and of
    /// `eval_length / 4` multiples for scoring windows of up to `eval_length` (the model's
    /// context).
    pub fn new(
        device: Device,
        rows: Rows,
        max_length: usize,
        eval_length: usize,
        ignore_index: i64,
    ) -> Result<Self> {
        let Rows { lanes, per_lane } = rows;
        check(device)?;
        let shim = shim()?;
        // Captured attention is flash or memory-efficient, not cuDNN's (csrc/cuda_graphs.cpp).
        // SAFETY: a plain call into the shim.
        shim.check(unsafe { (shim.sdpa_without_cudnn)() })?;
        let mut pool = (0, 0);
        // SAFETY: both outputs are written by the shim on success.
        shim.check(unsafe { (shim.pool)(&mut pool.0, &mut pool.1) })?;
        let l = lanes as i64;
        let eval_buckets = bucket_lengths(eval_length)
            .into_iter()
            .map(|len| EvalBucket {
                len,
                inputs: Tensor::zeros([3, l, len], (Kind::Int64, device)),
                out: Tensor::zeros([l], (Kind::Double, device)),
                graph: None,
            })
            .collect();
        let buckets = bucket_lengths(max_length)
            .into_iter()
            .map(|len| Bucket {
                len,
                inputs: Tensor::zeros([2, l * per_lane as i64, len], (Kind::Int64, device)),
                aux: Tensor::zeros([2, l], (Kind::Float, device)),
                lr: Tensor::zeros([l], (Kind::Float, device)),
                out: Tensor::zeros([2, l], (Kind::Float, device)),
                graph: None,
            })
            .collect();
        Ok(Self {
            shim,
            device,
            lanes,
            rows: per_lane,
            lr_varies: false,
            pool,
            buckets,
            eval_buckets,
            ignore_index,
            replays: 0,
            replay_host: std::time::Duration::ZERO,
        })
    }

    /// Nodes of each bucket captured so far, training steps then scoring forwards.
    pub fn stats(&self) -> Vec<BucketStats> {
        let train = self.buckets.iter().map(|b| (b.len, &b.graph, false));
        let score = self.eval_buckets.iter().map(|b| (b.len, &b.graph, true));
        train
            .chain(score)
            .filter_map(|(len, graph, scoring)| {
                graph.as_ref().map(|g| BucketStats {
                    len,
                    nodes: g.nodes,
                    scoring,
                })
            })
            .collect()
    }

    /// The host's cost of the training replays so far.
    pub fn replay_stats(&self) -> ReplayStats {
        ReplayStats {
            replays: self.replays,
            host_us_per_replay: self.replay_host.as_secs_f64() * 1e6 / self.replays.max(1) as f64,
        }
    }

    /// Runs one round: copies each lane's chunks (and, when steps have their own, its learning
    /// rate `lr`) into the bucket of the longest chunk, captures that bucket's graph the first
    /// time (`body` records the step on the [`StepBuffers`]), replays it and copies each lane's
    /// loss and skip out of the bucket, on the device (no sync).
    pub fn step(
        &mut self,
        lanes: &[LaneInput],
        lr: Option<&[f64]>,
        body: &mut dyn FnMut(&StepBuffers) -> Result<()>,
    ) -> Result<ReplayedRound> {
        assert_eq!(lanes.len(), self.lanes, "one input per lane");
        let longest = lanes
            .iter()
            .flat_map(|l| l.tokens.iter().map(|t| t.len()))
            .max()
            .unwrap_or(2);
        let Some(i) = self.buckets.iter().position(|b| b.len >= longest as i64) else {
            return Err(Error::internal(format!(
                "a chunk of {longest} tokens exceeds the largest graph bucket"
            )));
        };
        let started = std::time::Instant::now();
        let captured = self.buckets[i].graph.is_some();
        let len = self.buckets[i].len as usize;
        let n = self.lanes;
        let rows = self.rows;
        let (ids, aux) = host_inputs(lanes, rows, len, self.ignore_index);
        let ids = upload(Tensor::from_slice(&ids), self.device)?;
        let aux = upload(Tensor::from_slice(&aux), self.device)?;
        let lr_varies = self.lr_varies;
        let b = &mut self.buckets[i];
        // Device to device: queued, no sync.
        b.inputs
            .copy_(&ids.view([2, (n * rows) as i64, len as i64]));
        b.aux.copy_(&aux.view([2, n as i64]));
        if lr_varies {
            let rates = lr.ok_or_else(|| {
                Error::internal("a captured step with a learning-rate schedule got no rates")
            })?;
            let rates: Vec<f32> = rates.iter().map(|&r| r as f32).collect();
            b.lr.copy_(&upload(Tensor::from_slice(&rates), self.device)?);
        }
        if !captured {
            self.capture(i, body)?;
        }
        let b = &self.buckets[i];
        let g = b.graph.as_ref().expect("captured above");
        // SAFETY: a captured, instantiated graph.
        self.shim.check(unsafe { (self.shim.replay)(g.handle) })?;
        if captured {
            self.replays += 1;
            self.replay_host += started.elapsed();
        }
        Ok(ReplayedRound {
            out: b.out.copy(),
            bucket_len: len,
            rows,
        })
    }

    /// The bucket's buffers as the body sees them, its skip flags the round's or (warm-up) all.
    fn buffers(&self, i: usize, warm_up: bool) -> StepBuffers {
        let b = &self.buckets[i];
        let skip = b.aux.get(1);
        StepBuffers {
            ids: b.inputs.get(0),
            labels: b.inputs.get(1),
            targets: b.aux.get(0),
            // Warm-up skips every update: no weight moves before the capture.
            skip: if warm_up { skip.ones_like() } else { skip },
            lr: self.lr_varies.then(|| b.lr.shallow_clone()),
            out: b.out.shallow_clone(),
        }
    }

    fn capture(
        &mut self,
        i: usize,
        body: &mut dyn FnMut(&StepBuffers) -> Result<()>,
    ) -> Result<()> {
        // The buffers' views are made before the capture: a view is host-side work.
        let (warm, buffers) = (self.buffers(i, true), self.buffers(i, false));
        let graph = self.record(&mut |warming| body(if warming { &warm } else { &buffers }))?;
        self.buckets[i].graph = Some(graph);
        Ok(())
    }

    /// On a side stream: `run(true)` [`WARMUP`] times, then `run(false)` captured into a new graph
    /// of the run's pool.
    fn record(&self, run: &mut dyn FnMut(bool) -> Result<()>) -> Result<Graph> {
        let side = SideStream::enter(self.shim, self.device)?;
        for _ in 0..WARMUP {
            run(true)?;
        }
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
        let recorded = run(false);
        // The capture is ended whatever the body did, so the stream is usable again.
        // SAFETY: a graph in capture.
        let ended = self
            .shim
            .check(unsafe { (self.shim.capture_end)(graph.handle, &mut graph.nodes) });
        recorded?;
        ended?;
        side.exit()?;
        Ok(graph)
    }

    /// `windows` scored by `lm` through [`GraphedSteps::score`], the body
    /// [`crate::eval::score_buffers`].
    pub(crate) fn score_windows(
        &mut self,
        lm: &crate::lm::LanguageModel,
        windows: &[Option<&crate::eval::Window>],
    ) -> Result<Vec<Option<f64>>> {
        let inputs: Vec<Option<WindowInput>> = windows
            .iter()
            .map(|w| {
                w.map(|w| WindowInput {
                    input: &w.input,
                    targets: &w.targets,
                })
            })
            .collect();
        self.score(&inputs, &mut |b| crate::eval::score_buffers(lm, b))
    }

    /// Scores one window per lane (`None`: the lane scores nothing this round) as a replay of the
    /// captured forward of the bucket the longest window fits (captured the first time; `body`
    /// records it on the [`ScoreBuffers`]); reads each lane's Σ log p(target) (one sync).
    pub fn score(
        &mut self,
        windows: &[Option<WindowInput>],
        body: &mut dyn FnMut(&ScoreBuffers) -> Result<()>,
    ) -> Result<Vec<Option<f64>>> {
        assert_eq!(windows.len(), self.lanes, "one window (or none) per lane");
        let longest = windows.iter().flatten().map(|w| w.input.len()).max();
        let Some(longest) = longest.filter(|&t| t > 0) else {
            return Ok(vec![None; windows.len()]);
        };
        let Some(i) = self
            .eval_buckets
            .iter()
            .position(|b| b.len >= longest as i64)
        else {
            return Err(Error::internal(format!(
                "a window of {longest} tokens exceeds the largest graph bucket"
            )));
        };
        let len = self.eval_buckets[i].len as usize;
        let n = self.lanes as i64;
        let host = score_inputs(windows, len);
        self.eval_buckets[i]
            .inputs
            .copy_(&Tensor::from_slice(&host).view([3, n, len as i64]));
        if self.eval_buckets[i].graph.is_none() {
            let buffers = self.eval_buckets[i].buffers();
            // A forward changes nothing: its warm-up runs are the body itself.
            let graph = self.record(&mut |_| body(&buffers))?;
            self.eval_buckets[i].graph = Some(graph);
        }
        let b = &self.eval_buckets[i];
        let g = b.graph.as_ref().expect("captured above");
        // SAFETY: a captured, instantiated graph.
        self.shim.check(unsafe { (self.shim.replay)(g.handle) })?;
        let out = Vec::<f64>::try_from(b.out.to_device(Device::Cpu))
            .map_err(|e| Error::internal(format!("reading replayed scores: {e}")))?;
        Ok(windows
            .iter()
            .zip(out)
            .map(|(w, v)| w.as_ref().map(|_| v))
            .collect())
    }
}

/// One lane's window to score: the model's input and the targets of its last positions.
#[derive(Debug, Clone, Copy)]
pub struct WindowInput<'a> {
    /// Tokens fed to the model.
    pub input: &'a [i64],
    /// The next tokens of the input's last `targets.len()` positions.
    pub targets: &'a [i64],
}

/// The static buffers a captured scoring forward reads and writes (views of its bucket's).
pub struct ScoreBuffers {
    /// `[lanes, len]` tokens, right-padded.
    pub ids: Tensor,
    /// `[lanes, len]` each position's target (0 where it scores nothing).
    pub targets: Tensor,
    /// `[lanes, len]` 1 at the positions scored, 0 elsewhere.
    pub scored: Tensor,
    /// `[lanes]` fp64 the body writes: each lane's Σ log p(target).
    pub logliks: Tensor,
}

/// One window length's captured scoring forward and its static buffers.
struct EvalBucket {
    len: i64,
    /// `[3, lanes, len]` int64: tokens, targets, scored mask.
    inputs: Tensor,
    /// `[lanes]` fp64.
    out: Tensor,
    graph: Option<Graph>,
}

impl EvalBucket {
    fn buffers(&self) -> ScoreBuffers {
        ScoreBuffers {
            ids: self.inputs.get(0),
            targets: self.inputs.get(1),
            scored: self.inputs.get(2),
            logliks: self.out.shallow_clone(),
        }
    }
}

/// A scoring round's host-side inputs in a bucket of `len` positions: `[3, lanes, len]` tokens
/// (right-padded with 0), each position's target, and 1 where a position is scored.
pub(super) fn score_inputs(windows: &[Option<WindowInput>], len: usize) -> Vec<i64> {
    let n = windows.len();
    let mut host = vec![0i64; 3 * n * len];
    for (l, w) in windows.iter().enumerate() {
        let Some(w) = w else { continue };
        let row = l * len;
        host[row..row + w.input.len()].copy_from_slice(w.input);
        let first = w.input.len() - w.targets.len();
        let (targets, scored) = (n * len + row + first, 2 * n * len + row + first);
        host[targets..targets + w.targets.len()].copy_from_slice(w.targets);
        host[scored..scored + w.targets.len()].fill(1);
    }
    host
}

impl ScoreBuffers {
    /// The buffers of a scoring round on `device` without a graph (tests on the CPU).
    pub fn eager(windows: &[Option<WindowInput>], len: usize, device: Device) -> Self {
        let n = windows.len() as i64;
        let inputs = Tensor::from_slice(&score_inputs(windows, len))
            .view([3, n, len as i64])
            .to(device);
        ScoreBuffers {
            ids: inputs.get(0),
            targets: inputs.get(1),
            scored: inputs.get(2),
            logliks: Tensor::zeros([n], (Kind::Double, device)),
        }
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
        use crate::ttt::{Chunk, ChunkStep, Dropout, Step, TrainConfig, Trainer, IGNORE_INDEX};
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
        let buffers = |chunk: &[i64], steps: bool| {
            let lane = LaneInput {
                tokens: vec![chunk],
                steps,
            };
            StepBuffers::eager(&[lane], 1, len, None, IGNORE_INDEX, Device::Cpu).unwrap()
        };
        for chunk in &chunks {
            let step = eager.step(&eager_lm, &Step::of(Chunk::Tokens(chunk.clone())));
            let ChunkStep::Trained(want) = step.unwrap().read() else {
                panic!("a finite chunk trains");
            };
            let b = buffers(chunk, true);
            train_body(&mut body.weights, &mut body.opt, false, &body_lm, &b).unwrap();
            assert_eq!(b.out.double_value(&[1, 0]), 0.0);
            let got = b.out.double_value(&[0, 0]);
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
        assert_eq!(body.opt.steps().unwrap(), [3]);
        assert_eq!(eager.opt.steps().unwrap(), [3]);
        // Warm-up: the skip flag set, the weights and the count stay.
        let b = buffers(&chunks[0], false);
        train_body(&mut body.weights, &mut body.opt, false, &body_lm, &b).unwrap();
        assert_eq!(b.out.double_value(&[1, 0]), 1.0);
        compare("after a skipped step");
        assert_eq!(body.opt.steps().unwrap(), [3]);
    }

    /// The captured scoring forward's body, run on the CPU without a capture, gives what eager
    /// scoring gives for windows padded to a longer bucket: one lane, and lanes with an idle one.
    #[test]
    fn the_scoring_body_equals_eager_scoring() {
        use crate::eval::{score_buffers, score_window, score_windows_in_lanes, Window};
        use crate::ttt::flat::tests::tiny_gpt2;
        let lm = tiny_gpt2();
        let tokens: Vec<i64> = (0..40).map(|i| (i * 37) % 200 + 3).collect();
        let window = |from: usize, to: usize, scored: usize| Window {
            input: tokens[from..to].to_vec(),
            targets: tokens[to + 1 - scored..to + 1].to_vec(),
        };
        let (a, b) = (window(0, 20, 12), window(5, 30, 25));
        fn input(w: &Window) -> WindowInput<'_> {
            WindowInput {
                input: &w.input,
                targets: &w.targets,
            }
        }
        let close = |got: f64, want: f64| {
            assert!(
                (got - want).abs() <= 1e-6 * want.abs(),
                "{got} vs eager {want}"
            )
        };
        let one = ScoreBuffers::eager(&[Some(input(&a))], 32, Device::Cpu);
        score_buffers(&lm, &one).unwrap();
        close(
            one.logliks.double_value(&[0]),
            score_window(&lm, &a).unwrap(),
        );
        let three = ScoreBuffers::eager(&[Some(input(&a)), None, Some(input(&b))], 32, Device::Cpu);
        score_buffers(&lm, &three).unwrap();
        let want = score_windows_in_lanes(&lm, &[Some(&a), None, Some(&b)]).unwrap();
        close(three.logliks.double_value(&[0]), want[0].unwrap());
        close(three.logliks.double_value(&[2]), want[2].unwrap());
        assert_eq!(three.logliks.double_value(&[1]), 0.0);
    }

    #[test]
    fn graphs_on_the_cpu_are_a_clear_error() {
        let err = check(Device::Cpu).unwrap_err().to_string();
        assert!(
            err.contains("cuda_graphs") && err.contains("--device cuda"),
            "{err}"
        );
        let rows = Rows {
            lanes: 1,
            per_lane: 1,
        };
        assert!(GraphedSteps::new(Device::Cpu, rows, 1024, 1024, -100).is_err());
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
