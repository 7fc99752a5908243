//! Giving freed memory back to the system. glibc keeps what a thread frees
//! in that thread's arena for its next allocations and returns pages only
//! from the top of an arena, so after a burst — a large CRL, a busy minute
//! on many threads — tens of megabytes stay resident that nothing uses (54
//! of the server's 146 MB of heap after the benchmark's OCSP stage,
//! docs/performance.md).

/// Returns the free pages of every allocator arena to the system
/// (`malloc_trim(0)`); live allocations stay where they are. It locks each
/// arena while it walks it: for after a burst and for quiet moments, not
/// for every request. Elsewhere than on glibc it does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed() {
    // SAFETY: malloc_trim takes no pointers and touches only the
    // allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() {}

/// [`release_freed`] off the async threads, which it would hold up while
/// it walks every arena.
pub async fn release_freed_in_background() {
    crate::logging::spawn_blocking_in_span(release_freed)
        .await
        .ok();
}
