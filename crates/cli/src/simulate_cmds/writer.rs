//! A writer on the scratch filesystem: what an application sees of a freeze.
//!
//! FIFREEZE makes every write to the filesystem wait (`sb_start_write`) until FITHAW, so a
//! thread that keeps writing measures the frozen window as writers see it: the longest
//! single `write(2)` call. The thread also creates and truncates files, so the filesystem's
//! metadata keeps changing: a snapshot taken without a freeze then catches it mid-change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Files the writer cycles through (each rewritten from empty).
const FILES: usize = 8;
/// Bytes per `write(2)`.
const CHUNK: usize = 16 << 10;
/// Chunks per file before it moves to the next (256 KiB files: 2 MiB in all).
const CHUNKS_PER_FILE: usize = 16;
/// Pause between writes (the writer must not flood the page cache).
const PAUSE: Duration = Duration::from_millis(2);

/// A write call that took long: the writer was blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub started: Instant,
    pub took: Duration,
}

/// The running writer; stopped by [`Writer::stop`].
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Stall>>>,
}

impl Writer {
    /// Starts writing under `dir` (created). Every write taking longer than `notable` is
    /// recorded.
    pub fn start(dir: &Path, notable: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scratch-writer".into())
            .spawn(move || write_until(&dir, &flag, notable))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the writer to stop after its current write. It is blocked while the filesystem
    /// is frozen, so call [`Writer::join`] only once the filesystem is thawed.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Stops and returns the recorded stalls, oldest first.
    pub fn join(mut self) -> Vec<Stall> {
        self.request_stop();
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

fn write_until(dir: &Path, stop: &AtomicBool, notable: Duration) -> Vec<Stall> {
    let chunk = vec![0x5a_u8; CHUNK];
    let mut stalls = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let path: PathBuf = dir.join(format!("file-{}", n % FILES));
        n += 1;
        // Creating (truncating) a file waits for a thaw like a write does.
        let started = Instant::now();
        let created = std::fs::File::create(&path);
        let took = started.elapsed();
        if took >= notable {
            stalls.push(Stall { started, took });
        }
        let Ok(mut file) = created else {
            std::thread::sleep(PAUSE * 10);
            continue;
        };
        for _ in 0..CHUNKS_PER_FILE {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let started = Instant::now();
            let ok = file.write_all(&chunk).is_ok();
            let took = started.elapsed();
            if took >= notable {
                stalls.push(Stall { started, took });
            }
            if !ok {
                break;
            }
            std::thread::sleep(PAUSE);
        }
    }
    stalls
}
