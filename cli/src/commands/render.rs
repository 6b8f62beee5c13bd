//! `edgethumb render INPUT PARAMS -o OUTPUT`: one thumbnail from a local file.
//!
//! Also the benchmark entry point: `--repeat N --json` prints per-run stage timings and
//! the process's peak RSS, and `--peer-op A|B|C|D|E` stands for the shared peer benchmark's
//! operations so `../shared/bench/peers.sh --custom` can drive it unchanged.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use edgethumb::Params;
use edgethumb::pipeline::{self, Limits, Profile};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Source image (JPEG, PNG, WebP or GIF).
    pub input: PathBuf,
    /// Processing parameters as in a URL, e.g. `400w_400h.jpg` or `200w_200h_1e_80q.webp`.
    #[arg(required_unless_present = "peer_op", conflicts_with = "peer_op")]
    pub params: Option<String>,
    /// Where to write the thumbnail.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Encoder profile: `fast` (edge) or `best` (worker).
    #[arg(long, value_enum, default_value_t = ProfileArg::Fast)]
    pub profile: ProfileArg,
    /// Refuse sources with more pixels than this (checked from the header).
    #[arg(long, default_value_t = Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Refuse sources larger than this many bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    pub max_bytes: u64,
    /// Render this many times (for timing); the last result is written.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub repeat: u32,
    /// Print per-run timings and peak memory as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Use the shared peer benchmark's operation instead of PARAMS:
    /// A=400w_400h.jpg, B=200w_200h.webp, C=1024w_1r.jpg, D=400w_400h.png,
    /// E=400w_400h.avif.
    #[arg(long, value_enum)]
    pub peer_op: Option<PeerOp>,
    /// Search the quality as the worker does (SSIMULACRA2 target) when PARAMS set no `q`;
    /// implies the `best` encoder. For benchmarking the worker's output.
    #[arg(long)]
    pub tune: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    Fast,
    Best,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Fast => Profile::Fast,
            ProfileArg::Best => Profile::Best,
        }
    }
}

/// The peer benchmark's operations (see ../shared/bench/README.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum PeerOp {
    A,
    B,
    C,
    D,
    E,
}

impl PeerOp {
    pub fn params(self) -> &'static str {
        match self {
            PeerOp::A => "400w_400h.jpg",
            PeerOp::B => "200w_200h.webp",
            PeerOp::C => "1024w_1r.jpg",
            PeerOp::D => "400w_400h.png",
            PeerOp::E => "400w_400h.avif",
        }
    }
}

#[derive(Debug, Serialize)]
struct RunTimings {
    /// Sniffing, header checks, (reduced) decode and orientation.
    decode_ms: f64,
    /// ICC / CMYK / bit-depth conversion.
    colour_ms: f64,
    resize_ms: f64,
    encode_ms: f64,
    total_ms: f64,
    /// User + system CPU time of the run (trustworthy on a busy machine, unlike wall).
    cpu_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    input: String,
    params: String,
    profile: &'static str,
    format: String,
    width: u32,
    height: u32,
    bytes: usize,
    runs: Vec<RunTimings>,
    median_total_ms: f64,
    median_cpu_ms: f64,
    peak_rss_kb: i64,
    /// With `--tune`: the quality the search chose, its score, the encodes it spent and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    tuned: Option<Tuned>,
}

#[derive(Debug, Serialize)]
struct Tuned {
    quality: u8,
    score: Option<f64>,
    encodes: u32,
    method: &'static str,
    /// AVIF settled between `quality` and the step under it: libaom's base qindex.
    #[serde(skip_serializing_if = "Option::is_none")]
    qindex: Option<u8>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub fn run(args: RenderArgs) -> anyhow::Result<()> {
    // `--tune` is the worker's path: keep the worker's allocator settings for it.
    if !args.tune {
        keep_freed_memory();
    }
    let spec = match (&args.params, args.peer_op) {
        (_, Some(op)) => op.params().to_string(),
        (Some(p), None) => p.clone(),
        (None, None) => bail!("give PARAMS or --peer-op"),
    };
    let params: Params = spec
        .parse()
        .with_context(|| format!("bad params {spec:?}"))?;
    let limits = Limits {
        max_pixels: args.max_pixels,
        max_bytes: args.max_bytes,
    };
    let input = &args.input;
    let source = read_source(input, limits.max_bytes)?;
    let source: &[u8] = &source;
    let profile = Profile::from(args.profile);
    // `--tune` runs the worker's encode, with the worker's settings (EDGETHUMB_TARGET_SCORE
    // etc. apply here too), read once rather than in every timed run.
    let tuning = args
        .tune
        .then(|| edgethumb::worker::WorkerConfig::from_env().map(|c| c.tuning))
        .transpose()
        .context("worker settings")?;

    // `--tune` is the worker's render, so it decodes as the worker does.
    let decode_profile = if tuning.is_some() {
        Profile::Best
    } else {
        profile
    };
    let mut runs = Vec::with_capacity(args.repeat as usize);
    let mut last = None;
    for _ in 0..args.repeat {
        let cpu_start = cpu_time();
        let start = Instant::now();
        let prepared = pipeline::prepare_for(source, &params, &limits, decode_profile)
            .with_context(|| format!("{}", input.display()))?;
        let prepared_at = Instant::now();
        let encode_spec = prepared.encode_spec(&params, profile);
        let (bytes, tuned) = if let Some(tuning) = &tuning {
            let choice = edgethumb::worker::process::encode_prepared(&prepared, &params, tuning)
                .with_context(|| format!("{}", input.display()))?;
            let tuned = Tuned {
                quality: choice.quality,
                score: choice.score,
                encodes: choice.encodes,
                method: choice.method,
                qindex: choice.qindex,
            };
            (choice.bytes, Some(tuned))
        } else {
            let bytes = prepared
                .encode(&encode_spec)
                .with_context(|| format!("{}", input.display()))?;
            (bytes, None)
        };
        let done = Instant::now();
        let t = prepared.timings;
        runs.push(RunTimings {
            decode_ms: ms(t.load + t.orient),
            colour_ms: ms(t.colour),
            resize_ms: ms(t.resize),
            encode_ms: ms(done - prepared_at),
            total_ms: ms(done - start),
            cpu_ms: ms(cpu_time().saturating_sub(cpu_start)),
        });
        last = Some((prepared, encode_spec, bytes, tuned));
    }
    let Some((prepared, encode_spec, bytes, tuned)) = last else {
        bail!("no run");
    };
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;

    if args.json {
        let mut totals: Vec<f64> = runs.iter().map(|r| r.total_ms).collect();
        totals.sort_by(f64::total_cmp);
        let report = Report {
            input: input.display().to_string(),
            params: params.canonical(),
            profile: match profile {
                Profile::Fast => "fast",
                Profile::Best => "best",
            },
            format: encode_spec.format.to_string(),
            width: prepared.width,
            height: prepared.height,
            bytes: bytes.len(),
            median_total_ms: totals[totals.len() / 2],
            median_cpu_ms: {
                let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_ms).collect();
                cpu.sort_by(f64::total_cmp);
                cpu[cpu.len() / 2]
            },
            runs,
            peak_rss_kb: peak_rss_kb(),
            tuned,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Files at least this big are mapped instead of read.
const MAP_AT_BYTES: u64 = 256 << 10;

/// The source file's bytes, mapped or read.
enum SourceBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl std::ops::Deref for SourceBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SourceBytes::Mapped(map) => map,
            SourceBytes::Read(bytes) => bytes,
        }
    }
}

/// Read `path`, refusing it from its size alone when it is over `max_bytes`.
///
/// A big file is mapped with its pages populated up front instead of read: `read` copies
/// every byte into fresh heap pages, each faulted in and zeroed first (3–5 ms for a 4 MB
/// photo on a VM), while a populated private mapping points at the page cache the file
/// already sits in (under 1 ms). The mapping is private and read-only; if another process
/// truncates the file while we render, the kernel ends this process with SIGBUS, the same
/// trade-off ripgrep makes for local files. Anything that cannot be mapped (a pipe, a
/// special file) is read.
fn read_source(path: &std::path::Path, max_bytes: u64) -> anyhow::Result<SourceBytes> {
    let cannot_read = || format!("cannot read {}", path.display());
    let too_big = |actual: u64| {
        Err(pipeline::PipelineError::TooManyBytes {
            actual,
            limit: max_bytes,
        })
        .with_context(|| format!("{}", path.display()))
    };
    let file = std::fs::File::open(path).with_context(cannot_read)?;
    let meta = file.metadata().with_context(cannot_read)?;
    if meta.len() > max_bytes {
        return too_big(meta.len());
    }
    if meta.is_file() && meta.len() >= MAP_AT_BYTES {
        // SAFETY: a read-only private mapping of a regular file; see above for what a
        // concurrent truncation does. The bytes are only read through the returned slice.
        if let Ok(map) = unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
            return Ok(SourceBytes::Mapped(map));
        }
    }
    // Not a regular file (or it could not be mapped): read at most one byte over the
    // limit, so a growing file or endless device is refused instead of filling memory.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(&file, max_bytes.saturating_add(1)),
        &mut bytes,
    )
    .with_context(cannot_read)?;
    if bytes.len() as u64 > max_bytes {
        return too_big(bytes.len() as u64);
    }
    Ok(SourceBytes::Read(bytes))
}

/// A one-shot render frees big buffers (the reduced decode, the resize's scratch) just
/// before it allocates the next ones (the oriented thumbnail, the encoder's coefficient
/// buffers). glibc serves blocks over 128 KiB with fresh `mmap`s and unmaps them on free, so
/// every stage pays a page fault per 4 KiB again (~1.5-2 µs each on a VM: 30 ms of a 95 ms
/// 1024 px render of a 10 MP photo). Keeping big blocks on the heap, and the heap unshrunk,
/// lets later stages reuse pages the earlier ones already faulted in. Only for this
/// short-lived command: long-lived processes (serve, work, the Lambdas) keep glibc's
/// defaults, which adapt by themselves after the first requests.
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator tunables; called before any big allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// User + system CPU time consumed by this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set size of this process in KiB: the kernel's `VmHWM`, which starts afresh
/// at exec. `getrusage`'s `ru_maxrss` (the fallback off Linux) also counts what the parent
/// had resident when it forked us, so a caller with a big heap would inflate it.
fn peak_rss_kb() -> i64 {
    let from_status = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<i64>().ok()
        });
    if let Some(kb) = from_status {
        return kb;
    }
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            usage.ru_maxrss
        } else {
            -1
        }
    }
}
