//! glibc malloc settings for the node agent, applied before its first thread starts.
//!
//! Under a bulk transfer the agent allocates and frees 64 KiB chunks continuously (each read is
//! a chunk that h2 holds until it is encrypted), so the free space at the top of a malloc arena
//! keeps crossing glibc's trim threshold: the pages are returned to the kernel and faulted back
//! in a moment later. ztunnel-bench counted ~70,000 page faults a second in the two agents, and
//! rustls's receive buffer, which grows and shrinks with every record, took most of them.
//! Fixed thresholds keep half a megabyte at the top of the heap (no dynamic growth past that),
//! and one arena instead of one per thread keeps the resident set the size of what is in use:
//! per-thread caches (tcache) already spare the hot path the arena lock (bench/README.md has the
//! numbers). An operator's own `GLIBC_TUNABLES` wins: then nothing is changed.
//!
//! The one `unsafe` in this crate: `mallopt` is sound to call with these constants before any
//! other thread exists (glibc documents it as thread-safe anyway; it only sets parameters).
#![allow(unsafe_code)]

/// Where allocations above this size get their own mapping (default: dynamic, from 128 KiB).
const MMAP_THRESHOLD: i32 = 256 * 1024;
/// Free memory kept at the top of the heap before it is given back (default: dynamic).
const TRIM_THRESHOLD: i32 = 512 * 1024;

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
