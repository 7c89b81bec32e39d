//! The object-storage pass: the same store copied into the local S3 server (scripts/s3_server.py,
//! moto), searched with latency injected before every request, counting requests and bytes.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use tttnn::store::{SearchMode, Store};

use crate::{percentile, recall, run, Args, Query};

/// The local S3 server with the store uploaded, driven over its stdin (scripts/s3_server.py).
struct S3Server {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// Requests and bytes the server counted since the last reset.
#[derive(serde::Deserialize)]
struct S3Stats {
    requests: u64,
    by_method: std::collections::BTreeMap<String, u64>,
    bytes_sent: u64,
}

impl S3Server {
    /// Starts the server with the local store `dir` uploaded to `s3://bench/store`.
    fn start(dir: &Path) -> anyhow::Result<(Self, String)> {
        let python = std::env::var("TTTNN_S3_PYTHON").map_err(|_| {
            anyhow::anyhow!("TTTNN_S3_PYTHON is unset: run scripts/setup and source .tttnn-env")
        })?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3_server.py");
        let t = Instant::now();
        let mut child = Command::new(python)
            .arg(script)
            .arg("bench")
            .arg("--upload")
            .arg(format!("{}=bench/store", dir.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut endpoint = String::new();
        stdout.read_line(&mut endpoint)?;
        anyhow::ensure!(endpoint.starts_with("http://"), "no endpoint: {endpoint:?}");
        eprintln!(
            "uploaded {} to the local S3 server in {:.1}s",
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        Ok((
            S3Server {
                child,
                stdin,
                stdout,
            },
            endpoint.trim().to_string(),
        ))
    }

    fn send(&mut self, line: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{line}")?;
        Ok(self.stdin.flush()?)
    }

    fn stats(&mut self) -> anyhow::Result<S3Stats> {
        self.send("stats")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The object-storage passes: per injected latency, a fresh open of the store on S3, its first
/// (cold) query, then every `--s3-search` setting over the first `--s3-queries` queries.
pub fn object_storage(
    args: &Args,
    store: &Store,
    queries: &[Query],
    truth: &[Vec<String>],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !tttnn::store::is_uri(store.path()),
        "the object-storage pass copies a local store"
    );
    let settings = args
        .s3_search
        .iter()
        .map(|s| {
            let (n, r) = s
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--s3-search {s}: want nprobes:refine"))?;
            Ok((n.parse::<usize>()?, r.parse::<u32>()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut server, endpoint) = S3Server::start(store.path())?;
    for (var, value) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ] {
        std::env::set_var(var, value);
    }
    let n = args.s3_queries.min(queries.len());
    let (queries, truth) = (&queries[..n], &truth[..n]);
    let k = args.k;
    println!("\nThe same store on the local S3 server (moto), {n} queries per setting:\n");
    println!("| injected latency ms | search | nprobes | refine | p50 ms | p99 ms | recall@{k} | requests/query | KiB/query | requests by method |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &latency in &args.s3_latency_ms {
        server.send(&format!("latency {latency}"))?;
        server.send("reset")?;
        let t = Instant::now();
        let remote = Store::open(Path::new("s3://bench/store"))?;
        let (nprobes, refine) = settings[0];
        let mode = SearchMode::new(Some(nprobes), refine, None);
        let (_, first) = run(&remote, &queries[..1], k, mode)?;
        let cold = t.elapsed().as_secs_f64() * 1e3;
        let s = server.stats()?;
        println!(
            "| {latency} | open + first query | {nprobes} | {refine} | {cold:.1} | - | {:.3} | {} | {:.1} | {:?} |",
            recall(&first, &truth[..1]),
            s.requests,
            s.bytes_sent as f64 / 1024.0,
            s.by_method
        );
        for &(nprobes, refine) in &settings {
            let mode = SearchMode::new(Some(nprobes), refine, None);
            // The same queries twice: the first pass reads index partitions for the first time,
            // the repeat finds them in Lance's index cache.
            for pass in ["IVF-PQ", "IVF-PQ, repeated"] {
                server.send("reset")?;
                let (mut ms, found) = run(&remote, queries, k, mode)?;
                let s = server.stats()?;
                let per = |x: u64| x as f64 / n as f64;
                println!(
                    "| {latency} | {pass} | {nprobes} | {refine} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} | {:?} |",
                    percentile(&mut ms, 0.5),
                    percentile(&mut ms, 0.99),
                    recall(&found, truth),
                    per(s.requests),
                    per(s.bytes_sent) / 1024.0,
                    s.by_method
                );
            }
        }
    }
    Ok(())
}
