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
//! This owns nothing else and changes nothing off glibc (musl, other systems). The
//! binaries call it first thing in `main`; the library never does, so a program that
//! embeds `pipe` keeps its own allocator settings.

/// Blocks at least this large are mapped on their own: well above every buffer of the
/// data path (frames ≤ 256 KiB, copy buffers 256 KiB, socket buffers 64 KiB), so those
/// always come from the heap. Setting it also stops glibc's dynamic threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;

/// Free space kept at the top of the heap before it is given back: frames of many
/// streams in flight fit, so the working set is not returned and refaulted per frame.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 64 * 1024 * 1024;

/// Applies the settings once per process; later calls do nothing.
pub fn tune_for_frames() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc <malloc.h>
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: mallopt only changes allocator parameters; it is thread-safe in
            // glibc (takes the arena lock) and both values are in its documented range.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        });
    }
}
