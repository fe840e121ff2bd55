//! glibc malloc settings for a process that carries yamux sessions.
//!
//! yamux allocates a fresh buffer for every frame it receives (up to `SPLIT_SEND_SIZE`,
//! 256 KiB) and frees it once the stream has read it. glibc serves such blocks from the
//! heap after the first free, and with several streams in flight the free space at the
//! top of the heap keeps crossing its trim threshold: memory goes back to the kernel
//! with `brk` and comes back as fresh zeroed pages for the next frames (4,261 `brk`
//! calls in 3 s of a 4-stream iperf3 through `pipec`, 59 with one stream). Fixing both
//! thresholds keeps those pages in the process. Measured with benches/run.sh (TUNING.md):
//! 4 streams 7.8 → 11.3 Gbit/s, CPU per GB −30%, RSS with 1,000 and 10,000 idle
//! connections unchanged.
//!
//! Kept pages are not given back by themselves, though: after a load the process sat
//! at its peak for good (bulk transfers: piped+pipec 27+26 MiB instead of 5+4; 200
//! stalled downloads: ~95 MiB each). So `trim_when_idle` watches the bytes the splices
//! move and, once the data path has gone quiet, hands every free page back with
//! `malloc_trim` — once per quiet spell, never under load, so throughput keeps the
//! thresholds' gain.
//!
//! This owns nothing else and changes nothing off glibc (musl, other systems). The
//! binaries call `tune_for_frames` first thing in `main` and spawn `trim_when_idle`;
//! the library never does, so a program that embeds `pipe` keeps its own allocator
//! settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the data path is checked for quiet. Two checks make a quiet spell, so
/// memory goes back 4-6 s after the load stops (the target is within 10 s).
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// Bytes per check below which the data path counts as quiet: interactive traffic
/// (SSH, heartbeats of 1,000 idle connections) stays below it, a transfer does not.
const QUIET_BYTES: u64 = 1024 * 1024;

/// Bytes the splices have moved, all directions, since start.
static MOVED: AtomicU64 = AtomicU64::new(0);

/// Called by the splice for every chunk it copies.
pub(crate) fn note_moved(n: usize) {
    MOVED.fetch_add(n as u64, Ordering::Relaxed);
}

/// Blocks at least this large are mapped on their own: well above every buffer of the
/// data path (frames ≤ 256 KiB, copy buffers 256 KiB, socket buffers 64 KiB), so those
/// always come from the heap. Setting it also stops glibc's dynamic threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;

/// Free space kept at the top of the heap before it is given back: frames of many
/// streams in flight fit, so the working set is not returned and refaulted per frame.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 64 * 1024 * 1024;

/// One heap for every thread. glibc gives threads heaps of their own ("arenas"), and
/// `malloc_trim` can hand back the free top of the main heap only: after a load,
/// piped's worker arenas kept 16 of its 27 MiB after a trim (smaps, iperf3 -P1 then
/// -P4). With the one heap the same trim brings piped back to its fresh RSS. The data
/// path allocates a few thousand frames a second at 10 Gbit/s, far below the rate at
/// which one arena lock would be contended on two cores.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: i32 = 1;

/// Applies the settings once per process; later calls do nothing.
pub fn tune_for_frames() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc <malloc.h>
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            const M_ARENA_MAX: i32 = -8;
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: mallopt only changes allocator parameters; it is thread-safe in
            // glibc (takes the arena lock) and the values are in its documented range.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
                mallopt(M_ARENA_MAX, ARENA_MAX);
            }
        });
    }
}

/// Gives free heap pages back to the kernel after each busy spell of the data path.
/// Runs for the life of the runtime; spawn it once per process.
pub async fn trim_when_idle() {
    let mut tick = super::ticker::interval(IDLE_CHECK);
    let mut last = MOVED.load(Ordering::Relaxed);
    let mut quiet_ticks = 0u32;
    let mut trimmed = true;
    loop {
        tick.tick().await;
        let now = MOVED.load(Ordering::Relaxed);
        if now.wrapping_sub(last) >= QUIET_BYTES {
            quiet_ticks = 0;
            trimmed = false;
        } else {
            quiet_ticks += 1;
        }
        last = now;
        if quiet_ticks >= 2 && !trimmed {
            trimmed = true;
            // Walking the heap takes milliseconds: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

/// Returns free memory at the top and in the middle of every heap to the kernel.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free memory; it takes each arena's lock and
        // is safe to call from any thread at any time.
        unsafe {
            malloc_trim(0);
        }
    }
}
