//! `--watch`: reload a policy when its file changes on disk.
//!
//! Files are polled rather than watched through inotify: editors and build
//! tools replace files by renaming over them, which an inotify watch on
//! the old inode misses, and a poll of four times a second costs nothing
//! next to a VM. A change is acted on once two polls in a row agree, so a
//! file still being written is not loaded half-way.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::policies::hotswap::{Change, HotSwap};

const POLL: Duration = Duration::from_millis(250);

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(swap: Arc<HotSwap>) -> std::io::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wasmvisor-watch".into())
            .spawn(move || watch_loop(&swap, &flag))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Seen {
    path: PathBuf,
    /// The version the running policy was loaded from (or last refused).
    settled: Option<Stamp>,
    /// A newer version seen on the last poll, waiting to be confirmed.
    pending: Option<Stamp>,
}

fn watch_loop(swap: &HotSwap, stop: &AtomicBool) {
    let mut seen: HashMap<String, Seen> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        let (_, list) = swap.list();
        seen.retain(|name, s| {
            list.iter()
                .any(|l| &l.name == name && s.path.as_os_str() == l.path.as_str())
        });
        for l in &list {
            let path = PathBuf::from(&l.path);
            let entry = seen.entry(l.name.clone()).or_insert_with(|| Seen {
                settled: stamp(&path),
                pending: None,
                path,
            });
            let now = stamp(&entry.path);
            if now.is_none() || now == entry.settled {
                entry.pending = None;
                continue;
            }
            if entry.pending != now {
                entry.pending = now;
                continue;
            }
            // Stable for two polls: reload.
            entry.settled = now;
            entry.pending = None;
            let Some(spec) = swap.spec_of(&l.name) else {
                continue;
            };
            match swap.apply(Change::Swap {
                name: l.name.clone(),
                spec,
            }) {
                Ok(r) => eprintln!(
                    "wasmvisor: watch: reloaded {} from {} (generation {}, cache {}, {} us)",
                    l.name, l.path, r.generation, r.cache, r.total_us
                ),
                Err(e) => eprintln!(
                    "wasmvisor: watch: reload of {} from {} refused: {e}; the old policy keeps serving",
                    l.name, l.path
                ),
            }
        }
        std::thread::sleep(POLL);
    }
}
