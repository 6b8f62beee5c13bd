//! The filesystem adapter of [`ObjectStore`]: a directory is the bucket (the embedded
//! default for local mode and tests).
//!
//! Layout under the root:
//! - `<key>`: the object's bytes, a plain file, so the directory is browsable and a folder
//!   of photos can be served as is (files without a sidecar get derived metadata).
//! - `.edgethumb/meta/<key>.json`: the sidecar (content type, cache-control, metadata, tags,
//!   ETag, and the identity of the body file it describes).
//! - `.edgethumb/tmp/`: bodies and sidecars being written. Under the root, hence on the same
//!   filesystem, so the final rename is atomic; outside the key space, so a partial file can
//!   never be listed or collide with a key.
//! - `.edgethumb/pending/`: commit records (see below). `.edgethumb/lock`: the write lock.
//!
//! `.edgethumb` is refused as a first key segment, so none of this can be addressed as an
//! object.
//!
//! A write must replace body and sidecar together, but two renames are not atomic. The
//! commit record makes them so: the body and sidecar are written and fsynced as temp files,
//! then a record naming both is made durable (the commit point), then both are renamed into
//! place and the record removed. Whoever finds a record (the next `open`, or a reader that
//! sees a body and sidecar that do not belong together) finishes the renames. A crash before
//! the commit point leaves the old object; after it, the new one. Writers serialize on an
//! advisory lock (`flock`), which also covers other processes sharing the directory. The
//! sidecar records the body's inode, so a reader can tell cheaply whether they match.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ListPage, Object, ObjectInfo, ObjectStore, PutRequest, StoreError, md5_etag};

/// The reserved top-level directory; never a key.
pub const RESERVED_DIR: &str = ".edgethumb";
/// Temp files older than this are left over from a crashed writer and are swept on open.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Longest key segment: 255 (the usual file-name limit) minus room for `.json`.
const MAX_SEGMENT_BYTES: usize = 250;

/// Why `key` cannot be a file under the root, or `None` when it can.
///
/// Every form that could escape the root or alias another key is refused: absolute keys,
/// `.`/`..` segments, empty segments (`a//b`, trailing `/`), NUL, backslashes (a separator
/// on Windows shares), and the reserved directory.
pub fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("empty key");
    }
    if key.len() > super::MAX_KEY_BYTES {
        return Some("longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return Some("absolute key (leading '/')");
    }
    if key.contains('\0') {
        return Some("contains NUL");
    }
    if key.contains('\\') {
        return Some("contains a backslash");
    }
    for (i, segment) in key.split('/').enumerate() {
        match segment {
            "" => return Some("empty path segment ('//' or trailing '/')"),
            "." | ".." => return Some("'.' or '..' path segment"),
            RESERVED_DIR if i == 0 => return Some("reserved for the store's own files"),
            s if s.len() > MAX_SEGMENT_BYTES => return Some("path segment over 250 bytes"),
            _ => {}
        }
    }
    None
}

fn check_key(key: &str) -> Result<(), StoreError> {
    match key_problem(key) {
        None => Ok(()),
        Some(reason) => Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        }),
    }
}

/// Which file a sidecar describes: device and inode survive the rename into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct BodyId {
    dev: u64,
    ino: u64,
}

impl BodyId {
    fn of(meta: &fs::Metadata) -> Self {
        BodyId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sidecar {
    body: BodyId,
    size: u64,
    etag: String,
    content_type: String,
    #[serde(default)]
    cache_control: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch.
    last_modified_ms: u64,
}

impl Sidecar {
    fn info(&self, key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: self.size,
            content_type: Some(self.content_type.clone()),
            cache_control: self.cache_control.clone(),
            etag: Some(self.etag.clone()),
            last_modified: Some(UNIX_EPOCH + Duration::from_millis(self.last_modified_ms)),
            metadata: self.metadata.clone(),
        }
    }

    fn describes(&self, meta: &fs::Metadata) -> bool {
        self.body == BodyId::of(meta) && self.size == meta.len()
    }
}

/// A commit record: the temp files to rename into place for `key`.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    key: String,
    body_tmp: String,
    sidecar_tmp: String,
}

/// A directory as a bucket.
#[derive(Debug, Clone)]
pub struct FsStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    bucket: String,
    temp_seq: AtomicU64,
}

/// Holds the store's write lock until dropped (closing the file releases the `flock`).
struct WriteLock(#[allow(dead_code)] File);

impl FsStore {
    /// Open (creating if needed) the store rooted at `root`, finish any write a crash
    /// interrupted, and sweep stale temp files.
    pub async fn open(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        blocking(move || FsStore::open_blocking(&root)).await
    }

    fn open_blocking(root: &Path) -> Result<FsStore, StoreError> {
        for dir in ["meta", "tmp", "pending"] {
            let path = root.join(RESERVED_DIR).join(dir);
            fs::create_dir_all(&path).map_err(|e| io_error(&path, e))?;
        }
        let root = root.canonicalize().map_err(|e| io_error(root, e))?;
        let bucket = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".to_string());
        let store = FsStore {
            inner: Arc::new(Inner {
                root,
                bucket,
                temp_seq: AtomicU64::new(0),
            }),
        };
        let lock = store.inner.lock()?;
        store.inner.recover(&lock)?;
        drop(lock);
        store.inner.sweep_stale_temps();
        Ok(store)
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// Run blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Io {
            path: String::new(),
            source: io::Error::other(format!("filesystem task failed: {e}")),
        })?
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Content type for a file that has no sidecar (dropped into the directory by hand).
pub fn guess_content_type(key: &str) -> &'static str {
    let ext = key
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" | "jpe" | "jfif" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        "heic" | "heif" => "image/heif",
        "tif" | "tiff" => "image/tiff",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        "txt" => "text/plain",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

enum Lookup {
    Found(Found),
    Missing,
    /// Body and sidecar disagree, or a commit is pending: look again under the lock.
    Unsure,
}

/// What a reader found for a key, consistent (body file and metadata belong together).
struct Found {
    file: File,
    info: ObjectInfo,
    tags: BTreeMap<String, String>,
    /// Without a sidecar the ETag is the body's MD5, computed once the body is read.
    derived: bool,
}

impl Inner {
    fn reserved(&self) -> PathBuf {
        self.root.join(RESERVED_DIR)
    }

    fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn sidecar_path(&self, key: &str) -> PathBuf {
        self.reserved().join("meta").join(format!("{key}.json"))
    }

    fn lock(&self) -> Result<WriteLock, StoreError> {
        let path = self.reserved().join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        file.lock().map_err(|e| io_error(&path, e))?;
        Ok(WriteLock(file))
    }

    /// Refuse paths that run through a symbolic link: a link inside the root could point
    /// anywhere, so following it would break the "never escapes the root" rule.
    fn check_no_symlinks(&self, key: &str) -> Result<(), StoreError> {
        let mut path = self.root.clone();
        for segment in key.split('/') {
            path.push(segment);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(StoreError::InvalidKey {
                        key: key.to_string(),
                        reason: "path runs through a symbolic link",
                    });
                }
                Ok(_) => {}
                Err(e) if is_missing(&e) => return Ok(()),
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        Ok(())
    }

    fn temp_name(&self, suffix: &str) -> String {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}-{seq}-{nanos:x}.{suffix}", std::process::id())
    }

    /// Write `data` to a new temp file, fsynced. Returns its name and metadata.
    fn write_temp(&self, suffix: &str, data: &[u8]) -> Result<(String, fs::Metadata), StoreError> {
        let name = self.temp_name(suffix);
        let path = self.reserved().join("tmp").join(&name);
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            file.write_all(data)?;
            file.sync_all()?;
            file.metadata()
        })();
        match result {
            Ok(meta) => Ok((name, meta)),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(io_error(&path, e))
            }
        }
    }

    /// Finish every interrupted commit. Caller holds the lock.
    fn recover(&self, _lock: &WriteLock) -> Result<(), StoreError> {
        let pending = self.reserved().join("pending");
        let entries = fs::read_dir(&pending).map_err(|e| io_error(&pending, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&pending, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                // A record still being written (before its rename): not committed.
                let _ = fs::remove_file(&path);
                continue;
            }
            let intent: Option<Intent> = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if let Some(intent) = intent
                && key_problem(&intent.key).is_none()
            {
                self.apply(&intent)?;
            }
            fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
        sync_dir(&pending)
    }

    /// Rename an intent's temp files into place (idempotent: a missing temp was already
    /// renamed). Sidecar first: the reader's inode check catches the window in between.
    fn apply(&self, intent: &Intent) -> Result<(), StoreError> {
        let tmp = self.reserved().join("tmp");
        let moves = [
            (
                tmp.join(&intent.sidecar_tmp),
                self.sidecar_path(&intent.key),
            ),
            (tmp.join(&intent.body_tmp), self.object_path(&intent.key)),
        ];
        for (from, to) in moves {
            if let Some(parent) = to.parent()
                && from.exists()
            {
                fs::create_dir_all(parent)
                    .map_err(|e| self.conflict_or_io(&intent.key, parent, e))?;
            }
            match fs::rename(&from, &to) {
                Ok(()) => {
                    if let Some(parent) = to.parent() {
                        sync_dir(parent)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => {}
                Err(e) => return Err(self.conflict_or_io(&intent.key, &to, e)),
            }
        }
        Ok(())
    }

    /// S3 can hold both `a` and `a/b`; a filesystem cannot. Report that as a bad key (not
    /// a retryable I/O error), since retrying cannot help.
    fn conflict_or_io(&self, key: &str, path: &Path, e: io::Error) -> StoreError {
        match e.kind() {
            io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory
            | io::ErrorKind::DirectoryNotEmpty
            | io::ErrorKind::AlreadyExists => StoreError::InvalidKey {
                key: key.to_string(),
                reason: "conflicts with another object (a directory cannot hold both `a` and `a/b`)",
            },
            io::ErrorKind::InvalidFilename => StoreError::InvalidKey {
                key: key.to_string(),
                reason: "not a valid file name on this filesystem",
            },
            _ => io_error(path, e),
        }
    }

    fn sweep_stale_temps(&self) {
        crate::local_files::remove_stale_files(&self.reserved().join("tmp"), STALE_TEMP_AGE);
    }

    fn read_sidecar(&self, key: &str) -> Option<Sidecar> {
        let bytes = fs::read(self.sidecar_path(key)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn pending_exists(&self) -> bool {
        fs::read_dir(self.reserved().join("pending"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }

    /// Open the body and pair it with its sidecar, consistently. Fast path without any
    /// lock; when unsure (a write in progress, or one a crash interrupted) wait for the
    /// writer lock, finish any pending commit, and look again.
    fn find(&self, key: &str) -> Result<Option<Found>, StoreError> {
        check_key(key)?;
        self.check_no_symlinks(key)?;
        match self.try_find(key, false)? {
            Lookup::Found(found) => return Ok(Some(found)),
            Lookup::Missing => return Ok(None),
            Lookup::Unsure => {}
        }
        let lock = self.lock()?;
        if self.pending_exists() {
            self.recover(&lock)?;
        }
        match self.try_find(key, true)? {
            Lookup::Found(found) => Ok(Some(found)),
            Lookup::Missing | Lookup::Unsure => Ok(None),
        }
    }

    /// `settled`: the caller holds the lock and no commit is pending, so a mismatch is an
    /// orphan sidecar (a crash during delete) and the file is served as hand-placed.
    fn try_find(&self, key: &str, settled: bool) -> Result<Lookup, StoreError> {
        let path = self.object_path(key);
        let file = match File::open(&path) {
            Ok(file) => file,
            // A first write of this key may be committed but not yet renamed into place.
            Err(e) if is_missing(&e) => {
                return Ok(if !settled && self.pending_exists() {
                    Lookup::Unsure
                } else {
                    Lookup::Missing
                });
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        let meta = file.metadata().map_err(|e| io_error(&path, e))?;
        if !meta.is_file() {
            return Ok(Lookup::Missing);
        }
        match self.read_sidecar(key) {
            Some(sidecar) if sidecar.describes(&meta) => Ok(Lookup::Found(Found {
                file,
                info: sidecar.info(key),
                tags: sidecar.tags,
                derived: false,
            })),
            Some(_) if !settled => Ok(Lookup::Unsure),
            // No sidecar: a hand-placed file (writes rename the sidecar in first, deletes
            // remove the body first, so our own objects never look like this).
            _ => Ok(Lookup::Found(Found {
                file,
                info: ObjectInfo {
                    key: key.to_string(),
                    size: meta.len(),
                    content_type: Some(guess_content_type(key).to_string()),
                    cache_control: None,
                    etag: None,
                    last_modified: meta.modified().ok(),
                    metadata: BTreeMap::new(),
                },
                tags: BTreeMap::new(),
                derived: true,
            })),
        }
    }

    fn read_found(&self, key: &str, found: Found, max_bytes: u64) -> Result<Object, StoreError> {
        let Found {
            mut file,
            mut info,
            derived,
            ..
        } = found;
        if info.size > max_bytes {
            return Err(StoreError::TooLarge {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                size: info.size,
                limit: max_bytes,
            });
        }
        let path = self.object_path(key);
        let capacity = usize::try_from(info.size).unwrap_or(0);
        let mut body = Vec::with_capacity(capacity);
        // `take` bounds memory even if the file grew after the size check.
        (&mut file)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|e| io_error(&path, e))?;
        if body.len() as u64 > max_bytes {
            return Err(StoreError::TooLarge {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                size: body.len() as u64,
                limit: max_bytes,
            });
        }
        info.size = body.len() as u64;
        if derived {
            info.etag = Some(md5_etag(&body));
        }
        Ok(Object {
            info,
            body: Bytes::from(body),
        })
    }

    fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        match self.find(key)? {
            None => Ok(None),
            Some(found) => self.read_found(key, found, max_bytes).map(Some),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        match self.find(key)? {
            None => Ok(None),
            Some(found) if !found.derived => Ok(Some(found.info)),
            // A hand-placed file: its ETag is its MD5, so read it (no size limit: a HEAD
            // never holds the body, only hashes it).
            Some(mut found) => {
                use md5::{Digest, Md5};
                let path = self.object_path(key);
                let mut hasher = Md5::new();
                io::copy(&mut found.file, &mut hasher).map_err(|e| io_error(&path, e))?;
                found.info.etag = Some(format!("\"{}\"", hex::encode(hasher.finalize())));
                Ok(Some(found.info))
            }
        }
    }

    fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        Ok(self.find(key)?.map(|f| f.tags))
    }

    fn put(&self, key: &str, body: &[u8], request: PutRequest) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        super::check_tags(&self.bucket, key, &request.tags)?;
        self.check_no_symlinks(key)?;
        let (body_tmp, body_meta) = self.write_temp("body", body)?;
        let sidecar = Sidecar {
            body: BodyId::of(&body_meta),
            size: body.len() as u64,
            etag: md5_etag(body),
            content_type: request.content_type,
            cache_control: request.cache_control,
            metadata: request
                .metadata
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            tags: request.tags,
            last_modified_ms: now_ms(),
        };
        let info = sidecar.info(key);
        let result = self.commit(key, &body_tmp, &sidecar);
        if result.is_err() {
            let tmp = self.reserved().join("tmp");
            let _ = fs::remove_file(tmp.join(&body_tmp));
        }
        result.map(|()| info)
    }

    fn commit(&self, key: &str, body_tmp: &str, sidecar: &Sidecar) -> Result<(), StoreError> {
        let sidecar_json = serde_json::to_vec(sidecar).map_err(|e| StoreError::Io {
            path: self.sidecar_path(key).display().to_string(),
            source: io::Error::other(e),
        })?;
        let (sidecar_tmp, _) = self.write_temp("json", &sidecar_json)?;
        let intent = Intent {
            key: key.to_string(),
            body_tmp: body_tmp.to_string(),
            sidecar_tmp: sidecar_tmp.clone(),
        };
        let lock = self.lock()?;
        let prepared = (|| {
            for path in [self.object_path(key), self.sidecar_path(key)] {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|e| self.conflict_or_io(key, parent, e))?;
                }
            }
            // Re-checked under the lock: a concurrent writer may have created directories.
            self.check_no_symlinks(key)?;
            if self.object_path(key).is_dir() {
                return Err(self.conflict_or_io(
                    key,
                    &self.object_path(key),
                    io::Error::from(io::ErrorKind::IsADirectory),
                ));
            }
            self.write_intent(&intent)
        })();
        let record = match prepared {
            Ok(record) => record,
            Err(e) => {
                let _ = fs::remove_file(self.reserved().join("tmp").join(&sidecar_tmp));
                return Err(e);
            }
        };
        // Committed: from here on a crash is finished by whoever finds the record.
        self.apply(&intent)?;
        fs::remove_file(&record).map_err(|e| io_error(&record, e))?;
        drop(lock);
        Ok(())
    }

    /// Make the commit record durable: temp name, fsync, rename to `*.json`, fsync dir.
    fn write_intent(&self, intent: &Intent) -> Result<PathBuf, StoreError> {
        let pending = self.reserved().join("pending");
        let name = self.temp_name("intent");
        let partial = pending.join(&name);
        let record = pending.join(format!("{name}.json"));
        let json =
            serde_json::to_vec(intent).map_err(|e| io_error(&record, io::Error::other(e)))?;
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&partial)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&partial, &record)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&partial);
            return Err(io_error(&record, e));
        }
        sync_dir(&pending)?;
        Ok(record)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.check_no_symlinks(key)?;
        let lock = self.lock()?;
        if self.pending_exists() {
            self.recover(&lock)?;
        }
        // Body first: a crash in between leaves an orphan sidecar, which readers ignore
        // (its inode matches nothing), never a body with lost metadata.
        for path in [self.object_path(key), self.sidecar_path(key)] {
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
                    self.prune_empty_parents(&path);
                }
                Ok(_) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(io_error(&path, e)),
            }
        }
        drop(lock);
        Ok(())
    }

    /// Remove directories left empty by a delete, so a later `a` can be written where
    /// `a/b` was. Stops at the root or the reserved dirs; a non-empty dir stops it too.
    fn prune_empty_parents(&self, path: &Path) {
        let stops = [self.root.clone(), self.reserved().join("meta")];
        let mut dir = path.parent();
        while let Some(d) = dir {
            if stops.iter().any(|s| s == d) || !d.starts_with(&self.root) {
                break;
            }
            if fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }

    fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError> {
        let page_size = super::clamp_page_size(page_size);
        // Walk only the deepest directory the prefix names fully.
        let (start_dir, start_key) = match prefix.rfind('/') {
            Some(i) if key_problem(&prefix[..i]).is_none() => {
                (self.root.join(&prefix[..i]), format!("{}/", &prefix[..i]))
            }
            Some(_) => return Ok(ListPage::default()),
            None => (self.root.clone(), String::new()),
        };
        if !start_key.is_empty()
            && self
                .check_no_symlinks(start_key.trim_end_matches('/'))
                .is_err()
        {
            return Ok(ListPage::default());
        }
        let mut keys = Vec::new();
        self.walk(&start_dir, &start_key, prefix, &mut keys)?;
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let after = continuation.unwrap_or_default();
        let mut page = ListPage::default();
        let mut remaining = keys
            .into_iter()
            .filter(|(k, _)| after.is_empty() || *k > after);
        for (key, meta) in remaining.by_ref() {
            page.objects.push(self.list_info(&key, &meta));
            if page.objects.len() == page_size {
                break;
            }
        }
        if remaining.next().is_some() {
            page.continuation = page.objects.last().map(|o| o.key.clone());
        }
        Ok(page)
    }

    /// Sidecar data when it matches the file; for hand-placed files no ETag (hashing every
    /// listed file would read the whole directory).
    fn list_info(&self, key: &str, meta: &fs::Metadata) -> ObjectInfo {
        match self.read_sidecar(key) {
            Some(sidecar) if sidecar.describes(meta) => sidecar.info(key),
            _ => ObjectInfo {
                key: key.to_string(),
                size: meta.len(),
                content_type: Some(guess_content_type(key).to_string()),
                cache_control: None,
                etag: None,
                last_modified: meta.modified().ok(),
                metadata: BTreeMap::new(),
            },
        }
    }

    fn walk(
        &self,
        dir: &Path,
        dir_key: &str,
        prefix: &str,
        out: &mut Vec<(String, fs::Metadata)>,
    ) -> Result<(), StoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(io_error(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not UTF-8: cannot be a key.
            };
            let key = format!("{dir_key}{name}");
            if dir_key.is_empty() && name == RESERVED_DIR {
                continue;
            }
            // symlink_metadata: links are never followed (they could leave the root).
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue; // Deleted while listing.
            };
            if meta.is_dir() {
                let sub = format!("{key}/");
                if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                    self.walk(&entry.path(), &sub, prefix, out)?;
                }
            } else if meta.is_file() && key.starts_with(prefix) && key_problem(&key).is_none() {
                out.push((key, meta));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Object>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.get(&key, max_bytes)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.head(&key)).await
    }

    async fn put(
        &self,
        key: &str,
        body: Bytes,
        request: PutRequest,
    ) -> Result<ObjectInfo, StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.put(&key, &body, request)).await
    }

    async fn tags(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.tags(&key)).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        continuation: Option<String>,
        page_size: u32,
    ) -> Result<ListPage, StoreError> {
        let (inner, prefix) = (self.inner.clone(), prefix.to_string());
        blocking(move || inner.list_page(&prefix, continuation, page_size)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let (inner, key) = (self.inner.clone(), key.to_string());
        blocking(move || inner.delete(&key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_escaping_form_is_refused() {
        for (key, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../outside.jpg", "leading .."),
            ("a/../../outside.jpg", "inner .."),
            ("a/..", "trailing .."),
            ("..", "bare .."),
            ("./a.jpg", "dot segment"),
            ("a/./b.jpg", "inner dot segment"),
            ("a\0b.jpg", "NUL"),
            ("a\\..\\b.jpg", "backslash"),
            ("..\\outside.jpg", "backslash dot-dot"),
            ("a//b.jpg", "empty segment"),
            ("a/", "trailing slash"),
            (".edgethumb/meta/x.json", "reserved dir"),
            (".edgethumb", "reserved dir itself"),
        ] {
            assert!(key_problem(key).is_some(), "{why}: {key:?} accepted");
            assert!(
                matches!(check_key(key), Err(StoreError::InvalidKey { .. })),
                "{why}"
            );
        }
        let long_segment = format!("{}.jpg", "x".repeat(MAX_SEGMENT_BYTES));
        assert!(key_problem(&long_segment).is_some());
    }

    #[test]
    fn ordinary_keys_are_accepted() {
        for key in [
            "a.jpg",
            "photos/cat.jpg@200w_200h_1e.webp",
            "..a.jpg",
            "a../b",
            ".edgethumbx/a.jpg",
            "x/.edgethumb/a.jpg",
            "spaces and ünïcode/日本.png",
            "...",
        ] {
            assert_eq!(key_problem(key), None, "{key:?}");
        }
    }

    #[test]
    fn content_type_guess() {
        assert_eq!(guess_content_type("a/B.JPG"), "image/jpeg");
        assert_eq!(guess_content_type("x.webp"), "image/webp");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
    }
}
