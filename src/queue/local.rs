//! The local adapter of [`JobQueue`]: a durable spool directory (the embedded default).
//!
//! One file per message, and every state change is a `rename`, which is atomic and which
//! exactly one caller can win, so any number of threads or processes can share a spool:
//!
//! - `tmp/<id>.…`: being written (fsynced, then renamed to ready or delayed: a crash never leaves a
//!   partial message visible).
//! - `ready/<id>.<count>`: visible; `count` is how many times it has been received.
//! - `inflight/<id>.<count>.<deadline_ms>`: received and invisible until the deadline
//!   (wall-clock milliseconds, so other processes can read it). The receipt is
//!   `<id>.<count>`: a fresh one per receive, so a stale receipt can never ack a message
//!   that has since been redelivered.
//!
//! - `delayed/<id>.<due_ms>`: sent with a delay ([`JobQueue::send_delayed`]), not receivable
//!   before the wall-clock millisecond `due_ms`; a receive moves it to `ready/<id>.0` once
//!   due. A file like the others, so a delay survives a restart.
//! - `dead/<id>.<count>`: received `max_receive_count` times without an ack (SQS's redrive
//!   to a dead-letter queue): kept for inspection, never delivered again, so a job that can
//!   never succeed neither disappears nor circulates forever.
//!
//! Receive first moves due delayed messages and expired in-flight ones to ready (or to dead), then claims ready ones by
//! renaming them to in-flight. Ack deletes the in-flight file; extend renames it with a new
//! deadline. Delivery is at-least-once like SQS: a claim or ack lost in a crash means the
//! message comes back, never that it is lost.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    DEFAULT_MAX_MESSAGE_BYTES, FailedEntry, JobQueue, MAX_DELAY, QueueError, ReceivedMessage,
    clamp_receive_max,
};

/// How often a long poll looks at the spool again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Receives without an ack before a message is dead-lettered (the SAM template's redrive
/// uses the same number for SQS).
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;

/// Temp files older than this were left by a crashed sender; swept on open.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// A spool directory as a queue. Cheap to clone; share freely between tasks.
#[derive(Debug, Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    name: String,
    max_message_bytes: usize,
    max_receive_count: u32,
    seq: AtomicU64,
}

fn io_error(path: &Path, source: io::Error) -> QueueError {
    QueueError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueueError::Io {
            path: String::new(),
            source: io::Error::other(format!("spool task failed: {e}")),
        })?
}

/// An in-flight file name, parsed.
struct InFlight {
    /// `<id>.<count>`
    receipt: String,
    deadline_ms: u64,
}

fn parse_inflight(name: &str) -> Option<InFlight> {
    let (receipt, deadline) = name.rsplit_once('.')?;
    let (id, count) = receipt.rsplit_once('.')?;
    if !is_id(id) || count.parse::<u32>().is_err() {
        return None;
    }
    Some(InFlight {
        receipt: receipt.to_string(),
        deadline_ms: deadline.parse().ok()?,
    })
}

/// `(id, count)` of a ready file name.
fn parse_ready(name: &str) -> Option<(&str, u32)> {
    let (id, count) = name.rsplit_once('.')?;
    if !is_id(id) {
        return None;
    }
    Some((id, count.parse().ok()?))
}

/// Ids are ours (`<nanos>-<pid>-<seq>`, hex and digits): checking the shape keeps a receipt
/// from a caller from ever naming a path outside the spool.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn valid_receipt(receipt: &str) -> bool {
    receipt
        .rsplit_once('.')
        .is_some_and(|(id, count)| is_id(id) && count.parse::<u32>().is_ok())
}

impl LocalQueue {
    /// Open (creating if needed) the spool at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<LocalQueue, QueueError> {
        let root = root.into();
        blocking(move || {
            for dir in ["ready", "inflight", "tmp", "dead", "delayed"] {
                let path = root.join(dir);
                fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
            }
            let inner = Inner {
                name: root.display().to_string(),
                root,
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
                seq: AtomicU64::new(0),
            };
            inner.sweep_stale_temps();
            Ok(LocalQueue {
                inner: Arc::new(inner),
            })
        })
        .await
    }

    /// Override the 256 KiB message limit (kept equal to SQS's so that local mode refuses
    /// what production would).
    pub fn with_max_message_bytes(self, limit: usize) -> Self {
        let inner = Inner {
            root: self.inner.root.clone(),
            name: self.inner.name.clone(),
            max_message_bytes: limit,
            max_receive_count: self.inner.max_receive_count,
            seq: AtomicU64::new(self.inner.seq.load(Ordering::Relaxed)),
        };
        LocalQueue {
            inner: Arc::new(inner),
        }
    }

    /// Override how many unacked receives send a message to `dead/` (at least 1).
    pub fn with_max_receive_count(self, count: u32) -> Self {
        let inner = Inner {
            root: self.inner.root.clone(),
            name: self.inner.name.clone(),
            max_message_bytes: self.inner.max_message_bytes,
            max_receive_count: count.max(1),
            seq: AtomicU64::new(self.inner.seq.load(Ordering::Relaxed)),
        };
        LocalQueue {
            inner: Arc::new(inner),
        }
    }

    /// Bodies of dead-lettered messages, oldest first, for inspection and re-driving.
    pub async fn dead_letters(&self) -> Result<Vec<String>, QueueError> {
        let inner = self.inner.clone();
        blocking(move || {
            let mut bodies = Vec::new();
            for name in inner.names("dead")? {
                let path = inner.dir("dead").join(&name);
                match fs::read(&path) {
                    Ok(bytes) => bodies.push(String::from_utf8_lossy(&bytes).into_owned()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(&path, e)),
                }
            }
            Ok(bodies)
        })
        .await
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Messages waiting (visible) and in flight, for status output and tests.
    pub async fn counts(&self) -> Result<(usize, usize), QueueError> {
        let inner = self.inner.clone();
        blocking(move || {
            let count = |dir: &str| -> Result<usize, QueueError> {
                let path = inner.root.join(dir);
                Ok(fs::read_dir(&path).map_err(|e| io_error(&path, e))?.count())
            };
            Ok((count("ready")?, count("inflight")?))
        })
        .await
    }
}

impl Inner {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn check_size(&self, body: &str) -> Result<(), QueueError> {
        super::check_message_size(body, self.max_message_bytes)
    }

    fn new_id(&self) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Zero-padded time first, so sorting names is (roughly) sending order.
        format!("{nanos:032x}-{:08x}-{seq:08x}", std::process::id())
    }

    fn send(&self, body: &str) -> Result<String, QueueError> {
        let id = self.new_id();
        self.write(body, "ready", &format!("{id}.0"))?;
        Ok(id)
    }

    /// A message receivable from `delay` from now: `delayed/<id>.<due_ms>`.
    fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        let id = self.new_id();
        let due = now_ms().saturating_add(duration_ms(delay.min(MAX_DELAY)));
        self.write(body, "delayed", &format!("{id}.{due}"))?;
        Ok(id)
    }

    /// Write `body` durably as `<dir>/<name>`: fsynced under `tmp/`, then renamed, so a crash
    /// never leaves a partial message where a receive would find it.
    fn write(&self, body: &str, dir: &str, name: &str) -> Result<(), QueueError> {
        self.check_size(body)?;
        let tmp = self.dir("tmp").join(name);
        let to = self.dir(dir).join(name);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(body.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &to)?;
            File::open(self.dir(dir))?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&to, e));
        }
        Ok(())
    }

    /// Move delayed messages whose time has come to ready, as never received.
    fn promote_due(&self) -> Result<(), QueueError> {
        let now = now_ms();
        for name in self.names("delayed")? {
            let Some((id, due)) = name
                .rsplit_once('.')
                .and_then(|(id, due)| Some((id, due.parse::<u64>().ok()?)))
                .filter(|(id, _)| is_id(id))
            else {
                continue;
            };
            if due > now {
                continue;
            }
            let from = self.dir("delayed").join(&name);
            let to = self.dir("ready").join(format!("{id}.0"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                // Promoted by another receiver meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&from, e)),
            }
        }
        Ok(())
    }

    fn sweep_stale_temps(&self) {
        crate::local_files::remove_stale_files(&self.dir("tmp"), STALE_TEMP_AGE);
    }

    fn names(&self, dir: &str) -> Result<Vec<String>, QueueError> {
        let path = self.dir(dir);
        let mut names: Vec<String> = fs::read_dir(&path)
            .map_err(|e| io_error(&path, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Move in-flight messages whose deadline passed back to ready.
    fn reclaim_expired(&self) -> Result<(), QueueError> {
        let now = now_ms();
        for name in self.names("inflight")? {
            let Some(inflight) = parse_inflight(&name) else {
                continue;
            };
            if inflight.deadline_ms > now {
                continue;
            }
            let from = self.dir("inflight").join(&name);
            let received = inflight
                .receipt
                .rsplit_once('.')
                .and_then(|(_, count)| count.parse::<u32>().ok())
                .unwrap_or(0);
            let to = if received >= self.max_receive_count {
                tracing::warn!(
                    event = "queue.dead_lettered",
                    queue = self.name.as_str(),
                    message = inflight.receipt.as_str(),
                    receive_count = received,
                    "message received {received} times without an ack; moved to dead/"
                );
                self.dir("dead").join(&inflight.receipt)
            } else {
                self.dir("ready").join(&inflight.receipt)
            };
            match fs::rename(&from, &to) {
                Ok(()) => {}
                // Acked, extended or reclaimed by someone else meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&from, e)),
            }
        }
        Ok(())
    }

    fn try_receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.promote_due()?;
        self.reclaim_expired()?;
        let mut out = Vec::new();
        for name in self.names("ready")? {
            if out.len() == max {
                break;
            }
            let Some((id, count)) = parse_ready(&name) else {
                continue;
            };
            let count = count.saturating_add(1);
            let receipt = format!("{id}.{count}");
            let deadline = now_ms().saturating_add(duration_ms(visibility));
            let from = self.dir("ready").join(&name);
            let to = self.dir("inflight").join(format!("{receipt}.{deadline}"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                // Another receiver won the claim.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&from, e)),
            }
            match fs::read(&to) {
                Ok(bytes) => out.push(ReceivedMessage {
                    id: id.to_string(),
                    receipt,
                    // Bodies are written from &str; a corrupted file still gets delivered
                    // (lossily) so the consumer can report and ack it instead of it
                    // circulating unseen.
                    body: String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
                    receive_count: count,
                }),
                // Visibility shorter than this read, and already reclaimed: skip it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&to, e)),
            }
        }
        Ok(out)
    }

    /// The in-flight file currently holding `receipt`.
    fn find_inflight(&self, receipt: &str) -> Result<Option<(String, InFlight)>, QueueError> {
        if !valid_receipt(receipt) {
            return Ok(None);
        }
        let prefix = format!("{receipt}.");
        let path = self.dir("inflight");
        for entry in fs::read_dir(&path).map_err(|e| io_error(&path, e))? {
            let Ok(name) = entry
                .map_err(|e| io_error(&path, e))?
                .file_name()
                .into_string()
            else {
                continue;
            };
            if name.starts_with(&prefix)
                && let Some(inflight) = parse_inflight(&name)
                && inflight.receipt == receipt
            {
                return Ok(Some((name, inflight)));
            }
        }
        Ok(None)
    }

    /// Apply `op` to the in-flight file of `receipt`, looking again if a concurrent extend
    /// renamed it between the lookup and the operation.
    fn with_inflight(
        &self,
        receipt: &str,
        op: impl Fn(&Path, &InFlight) -> io::Result<()>,
    ) -> Result<(), QueueError> {
        for _ in 0..5 {
            let Some((name, inflight)) = self.find_inflight(receipt)? else {
                return Err(QueueError::InvalidReceipt(receipt.to_string()));
            };
            let path = self.dir("inflight").join(&name);
            match op(&path, &inflight) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Err(QueueError::InvalidReceipt(receipt.to_string()))
    }

    fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.with_inflight(receipt, |path, _| fs::remove_file(path))
    }

    fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let deadline = now_ms().saturating_add(duration_ms(visibility));
        let inflight_dir = self.dir("inflight");
        self.with_inflight(receipt, |path, inflight| {
            fs::rename(
                path,
                inflight_dir.join(format!("{}.{deadline}", inflight.receipt)),
            )
        })
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.inner.check_size(body)?;
        let (inner, body) = (self.inner.clone(), body.to_string());
        blocking(move || inner.send(&body)).await
    }

    async fn send_delayed(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.inner.check_size(body)?;
        let (inner, body) = (self.inner.clone(), body.to_string());
        blocking(move || inner.send_delayed(&body, delay)).await
    }

    async fn send_batch(&self, bodies: &[String]) -> Result<Vec<FailedEntry>, QueueError> {
        let (inner, bodies) = (self.inner.clone(), bodies.to_vec());
        blocking(move || {
            let mut failed = Vec::new();
            let mut last_io = None;
            let mut sent = 0usize;
            for (index, body) in bodies.iter().enumerate() {
                match inner.send(body) {
                    Ok(_) => sent += 1,
                    Err(e) => {
                        failed.push(FailedEntry {
                            index,
                            reason: e.to_string(),
                        });
                        if matches!(e, QueueError::Io { .. }) {
                            last_io = Some(e);
                        }
                    }
                }
            }
            // The port's contract: an error means nothing could be sent at all.
            match last_io {
                Some(e) if sent == 0 && failed.len() == bodies.len() => Err(e),
                _ => Ok(failed),
            }
        })
        .await
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let max = clamp_receive_max(max);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let inner = self.inner.clone();
            let got = blocking(move || inner.try_receive(max, visibility)).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let (inner, receipt) = (self.inner.clone(), receipt.to_string());
        blocking(move || inner.ack(&receipt)).await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let (inner, receipt) = (self.inner.clone(), receipt.to_string());
        blocking(move || inner.extend(&receipt, visibility)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unacked_messages_are_dead_lettered_after_max_receives() {
        let dir = tempfile::tempdir().unwrap();
        let queue = LocalQueue::open(dir.path())
            .await
            .unwrap()
            .with_max_receive_count(2);
        queue.send("poison").await.unwrap();
        queue.send("good").await.unwrap();
        let short = Duration::from_millis(30);
        for round in 1..=2u32 {
            let got = queue.receive(10, Duration::ZERO, short).await.unwrap();
            assert_eq!(got.len(), 2, "round {round}");
            assert!(got.iter().all(|m| m.receive_count == round));
            if round == 2 {
                let good = got.iter().find(|m| m.body == "good").unwrap();
                queue.ack(&good.receipt).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        let got = queue.receive(10, Duration::ZERO, short).await.unwrap();
        assert!(
            got.is_empty(),
            "the poison message is not delivered a third time"
        );
        assert_eq!(
            queue.dead_letters().await.unwrap(),
            vec!["poison".to_string()]
        );
        // Dead letters survive a restart of the process (a new handle on the same spool).
        let reopened = LocalQueue::open(dir.path()).await.unwrap();
        assert_eq!(reopened.dead_letters().await.unwrap().len(), 1);
    }

    #[test]
    fn names_parse() {
        let inflight = parse_inflight("00ab-0000002a-00000001.3.1714566896789").unwrap();
        assert_eq!(inflight.receipt, "00ab-0000002a-00000001.3");
        assert_eq!(inflight.deadline_ms, 1_714_566_896_789);
        assert_eq!(
            parse_ready("00ab-0000002a-00000001.0"),
            Some(("00ab-0000002a-00000001", 0))
        );
        assert!(parse_ready("junk").is_none());
        assert!(parse_inflight("a.b.c").is_none());
    }

    #[test]
    fn receipts_cannot_name_paths() {
        for receipt in [
            "../../etc/passwd.1",
            "a/b.1",
            "",
            ".1",
            "abc",
            "x.y",
            "abc.1/../x",
        ] {
            assert!(!valid_receipt(receipt), "{receipt:?}");
        }
        assert!(valid_receipt("00ab-0000002a-00000001.3"));
    }

    #[tokio::test]
    async fn garbage_receipts_are_invalid_not_io_errors() {
        let dir = tempfile::tempdir().unwrap();
        let q = LocalQueue::open(dir.path()).await.unwrap();
        for receipt in ["../../x.1", "nope", "00ab-1.1"] {
            assert!(matches!(
                q.ack(receipt).await,
                Err(QueueError::InvalidReceipt(_))
            ));
            assert!(matches!(
                q.extend(receipt, Duration::from_secs(1)).await,
                Err(QueueError::InvalidReceipt(_))
            ));
        }
    }
}
