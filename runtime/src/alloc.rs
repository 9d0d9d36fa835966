//! glibc malloc settings for the node agent, applied before its first thread starts.
//!
//! Under a bulk transfer the agent allocates and frees 64 KiB chunks continuously (each read is
//! a chunk that h2 holds until it is encrypted), so the free space at the top of a malloc arena
//! keeps crossing glibc's trim threshold: the pages are returned to the kernel and faulted back
//! in a moment later. ztunnel-bench counted ~70,000 page faults a second in the two agents, and
//! rustls's receive buffer, which grows and shrinks with every record, took most of them.
//! Fixed thresholds keep up to 4 MiB free at the top of the heap before `free` gives any back
//! (glibc's dynamic threshold grows only after an mmap'd chunk is freed), and one arena instead
//! of one per thread keeps the resident set the size of what is in use: per-thread caches
//! (tcache) already spare the hot path the arena lock (bench/README.md has the numbers). An operator's own `GLIBC_TUNABLES` wins: then nothing is changed.
//!
//! A bulk transfer also leaves the heap fragmented: its 64 KiB chunks are freed in the middle of
//! the heap, below live allocations, where the trim threshold never returns them, and the agent
//! kept ~4 MiB more resident after an iperf3 run than before it. [`release_free_memory`], every
//! few seconds, hands those free pages back (`malloc_trim`, which `madvise`s whole free pages in
//! place and so moves nothing): the resident set follows the load down again.
//!
//! The `unsafe` in this crate: `mallopt` is sound to call with these constants before any
//! other thread exists (glibc documents it as thread-safe anyway; it only sets parameters), and
//! `malloc_trim` is thread-safe and takes no pointers.
#![allow(unsafe_code)]

/// Where allocations above this size get their own mapping (default: dynamic, from 128 KiB).
const MMAP_THRESHOLD: i32 = 256 * 1024;
/// Free memory kept at the top of the heap before `free` gives it back (default: dynamic). Above
/// how far a bulk transfer's working set swings: at 512 KiB the receiving agent's heap top still
/// moved by ~600 KiB several hundred times a second (`brk` down, then refaulted: 68,000 page
/// faults a second at 5 Gbit/s). What stays free is returned by [`release_free_memory`] within
/// seconds, so the resident set at rest does not grow by it.
const TRIM_THRESHOLD: i32 = 4 * 1024 * 1024;

/// How often [`release_free_memory`] runs: rarely enough to cost nothing measurable (a walk of a
/// heap of a few MiB), often enough that RSS settles seconds after a burst.
pub const RELEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Returns the heap's free pages to the kernel. Runs on a timer ([`release_periodically`]).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe, takes no pointers and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_memory`] every [`RELEASE_INTERVAL`], until the runtime stops.
pub async fn release_periodically() {
    let mut tick = tokio::time::interval(RELEASE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        release_free_memory();
    }
}

/// Applies the settings; a no-op where the C library is not glibc or the operator tuned it.
pub fn tune_for_proxy() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
