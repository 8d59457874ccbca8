//! `kvctl backup DIR` and `kvctl restore DIR`: the cluster's records by parallel range scans
//! through any node's or gateway's admin listener (`/admin/backup/*`, `/admin/restore`), with a
//! progress bar. A backup keeps every record as the replicas hold it: siblings, tombstones,
//! clocks and dots.
//!
//! The directory: `manifest.json` (format, release, counts, complete) and `data/LO-HI.kvb`,
//! one file per ring arc, each a sequence of frames: a little-endian u32 length, then a
//! postcard list of records (`kv_proto::Entry`).

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use kv_proto::{BackupPage, Entry};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::admin::Admin;

/// The format of a backup directory this kvctl writes and reads.
const FORMAT: u64 = 1;
/// Bytes of records in one restore request (at least one record).
const RESTORE_BATCH_BYTES: usize = 1 << 20;

/// Counts shown by the progress bar and in the manifest.
#[derive(Default)]
struct Progress {
    parts: AtomicU64,
    keys: AtomicU64,
    deleted: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    fn add(&self, entries: &[Entry], bytes: usize) {
        self.keys.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let deleted = entries.iter().filter(|(_, versions)| versions.iter().all(|v| v.tombstone)).count();
        self.deleted.fetch_add(deleted as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Prints the bar (on a terminal, in place; otherwise a line every 2 s) until `done`.
    fn show(self: &Arc<Self>, what: &'static str, total: u64, done: Done) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(async move {
            let terminal = std::io::stderr().is_terminal();
            let started = Instant::now();
            let every = if terminal { Duration::from_millis(200) } else { Duration::from_secs(2) };
            loop {
                let finished = done.wait(every).await;
                let line = progress.line(what, total, started.elapsed());
                if terminal {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
                if finished {
                    if terminal {
                        eprintln!();
                    }
                    return;
                }
            }
        })
    }

    fn line(&self, what: &str, total: u64, elapsed: Duration) -> String {
        let parts = self.parts.load(Ordering::Relaxed);
        let width: usize = 30;
        let filled = (parts.min(total) * width as u64).checked_div(total).map_or(width, |f| f as usize);
        let keys = self.keys.load(Ordering::Relaxed);
        format!(
            "{what} [{}{}] {parts}/{total} ranges, {keys} keys, {:.1} MB, {:.0} keys/s",
            "=".repeat(filled),
            " ".repeat(width - filled),
            self.bytes.load(Ordering::Relaxed) as f64 / 1e6,
            keys as f64 / elapsed.as_secs_f64().max(0.001)
        )
    }
}

/// Set once when the work is done; the progress printer waits on it.
#[derive(Clone, Default)]
struct Done(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicBool>);

impl Done {
    fn set(&self) {
        self.1.store(true, Ordering::Release);
        self.0.notify_waiters();
    }

    /// Whether it is set, after waiting up to `limit` for it.
    async fn wait(&self, limit: Duration) -> bool {
        if !self.1.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(limit, self.0.notified()).await;
        }
        self.1.load(Ordering::Acquire)
    }
}

/// Runs `job` on every item, `parallel` at a time, with the progress bar of `what` going; the
/// first failure stops it.
async fn in_parallel<'a, T, F, Fut>(
    what: &'static str,
    items: &'a [T],
    parallel: usize,
    progress: &Arc<Progress>,
    job: F,
) -> anyhow::Result<()>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let done = Done::default();
    let shown = progress.show(what, items.len() as u64, done.clone());
    let result = stream::iter(items).map(job).buffer_unordered(parallel.max(1)).try_collect::<Vec<()>>().await;
    done.set();
    let _ = shown.await;
    result.map(drop)
}

/// `kvctl backup DIR`: every arc of the ring, `parallel` at a time, into `dir` (which must not
/// exist, or be empty).
pub async fn backup(admin: Arc<Admin>, dir: &Path, parallel: usize) -> anyhow::Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} is not empty: back up into a new directory", dir.display());
    }
    std::fs::create_dir_all(dir.join("data"))?;
    let listing = admin.get("/admin/backup/ranges").await?;
    let ranges: Vec<(u64, u64)> =
        serde_json::from_value(listing["ranges"].clone()).map_err(|e| anyhow::anyhow!("/admin/backup/ranges: {e}"))?;
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    in_parallel("backup", &ranges, parallel, &progress, |&(lo, hi)| backup_arc(&admin, dir, lo, hi, &progress)).await?;
    let manifest = json!({
        "format": FORMAT,
        "release": env!("CARGO_PKG_VERSION"),
        "created_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "replicas": listing["replicas"],
        "ranges": ranges.len(),
        "keys": progress.keys.load(Ordering::Relaxed),
        "deleted_keys": progress.deleted.load(Ordering::Relaxed),
        "bytes": progress.bytes.load(Ordering::Relaxed),
        "complete": true,
    });
    // Written last: a backup without it was interrupted.
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    println!(
        "backup: {} keys ({} of them deleted), {} ranges, {:.1} MB in {:.1} s into {}",
        manifest["keys"],
        manifest["deleted_keys"],
        ranges.len(),
        progress.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

async fn backup_arc(admin: &Admin, dir: &Path, lo: u64, hi: u64, progress: &Progress) -> anyhow::Result<()> {
    let path = dir.join("data").join(format!("{lo:016x}-{hi:016x}.kvb"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let mut query = format!("/admin/backup/scan?lo={lo}&hi={hi}");
        if let Some(after) = &after {
            query.push_str(&format!("&after={}", hex::encode(after)));
        }
        let body = admin.bytes("GET", &query, Vec::new(), &[StatusCode::OK]).await?;
        let page: BackupPage =
            kv_proto::decode(&body).map_err(|e| anyhow::anyhow!("a backup page of {lo:016x}..={hi:016x}: {e}"))?;
        if !page.entries.is_empty() {
            let frame = kv_proto::encode(&page.entries);
            file.write_all(&u32::try_from(frame.len())?.to_le_bytes())?;
            file.write_all(&frame)?;
            progress.add(&page.entries, frame.len());
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    progress.parts.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// `kvctl restore DIR`: every record of a complete backup merged into the cluster, `parallel`
/// files at a time; into an empty cluster unless `into_non_empty`; under `ticket` (a retry) if
/// given.
pub async fn restore(
    admin: Arc<Admin>,
    dir: &Path,
    parallel: usize,
    into_non_empty: bool,
    ticket: Option<String>,
) -> anyhow::Result<()> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json"))
            .map_err(|e| anyhow::anyhow!("{}: no manifest.json ({e}): not a complete backup", dir.display()))?,
    )?;
    if manifest["format"].as_u64() != Some(FORMAT) || manifest["complete"] != json!(true) {
        anyhow::bail!(
            "{}: a backup of format {} (this kvctl reads {FORMAT}), complete: {}",
            dir.display(),
            manifest["format"],
            manifest["complete"]
        );
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("data"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "kvb"));
    files.sort();
    // The process checks, once, that no member holds a record (unless told otherwise), and
    // gives a ticket every batch carries (rule 16); a retry carries the first attempt's.
    let ticket = match ticket {
        Some(ticket) => ticket,
        None => {
            let begin =
                if into_non_empty { "/admin/restore/begin?into_non_empty=true" } else { "/admin/restore/begin" };
            let begun = admin.call("POST", begin, &[StatusCode::OK]).await?;
            let ticket =
                begun["ticket"].as_str().ok_or_else(|| anyhow::anyhow!("{begin} gave no ticket: {begun}"))?.to_owned();
            eprintln!(
                "restore ticket, good for {} s: if this restore fails, retry it with --ticket {ticket}",
                begun["valid_for_s"]
            );
            ticket
        }
    };
    let started = Instant::now();
    let progress = Arc::new(Progress::default());
    in_parallel("restore", &files, parallel, &progress, |path| restore_file(&admin, path, &ticket, &progress)).await?;
    let keys = progress.keys.load(Ordering::Relaxed);
    if Some(keys) != manifest["keys"].as_u64() {
        anyhow::bail!("restored {keys} keys where the manifest counts {}", manifest["keys"]);
    }
    println!(
        "restore: {keys} keys ({} of them deleted), {} files, {:.1} MB in {:.1} s",
        progress.deleted.load(Ordering::Relaxed),
        files.len(),
        progress.bytes.load(Ordering::Relaxed) as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn restore_file(admin: &Admin, path: &Path, ticket: &str, progress: &Progress) -> anyhow::Result<()> {
    let mut data = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut data)?;
    let mut batch: Vec<Entry> = Vec::new();
    let mut batch_bytes = 0;
    let mut rest = data.as_slice();
    while !rest.is_empty() {
        let (length, tail) =
            rest.split_at_checked(4).ok_or_else(|| anyhow::anyhow!("{}: cut short", path.display()))?;
        let length = u32::from_le_bytes(length.try_into()?) as usize;
        let (frame, tail) =
            tail.split_at_checked(length).ok_or_else(|| anyhow::anyhow!("{}: cut short", path.display()))?;
        rest = tail;
        let entries: Vec<Entry> = kv_proto::decode(frame).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for entry in entries {
            batch_bytes += entry.0.len() + entry.1.iter().map(|v| v.value.len() + 64).sum::<usize>();
            batch.push(entry);
            if batch_bytes >= RESTORE_BATCH_BYTES {
                send(admin, std::mem::take(&mut batch), ticket, progress).await?;
                batch_bytes = 0;
            }
        }
    }
    if !batch.is_empty() {
        send(admin, batch, ticket, progress).await?;
    }
    progress.parts.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn send(admin: &Admin, batch: Vec<Entry>, ticket: &str, progress: &Progress) -> anyhow::Result<()> {
    let body = kv_proto::encode(&batch);
    let bytes = body.len();
    admin.bytes("POST", &format!("/admin/restore?ticket={ticket}"), body, &[StatusCode::OK]).await?;
    progress.add(&batch, bytes);
    Ok(())
}
