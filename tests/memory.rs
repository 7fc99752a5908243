//! `clm::memory::release_freed` gives freed heap back to the system. A test
//! binary of its own: the figure is the whole process's resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Anonymous resident memory of this process, in kB.
fn resident_anon_kb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn freed_heap_goes_back_to_the_system() {
    // On a thread of its own, as the server's bursts are: its own arena.
    std::thread::spawn(|| {
        // 64 MB in 4 kB pieces, all freed but the newest, which keeps the
        // arena's top in use: glibc's free alone returns none of it.
        let mut pieces: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8 | 1; 4096]).collect();
        let newest = pieces.pop();
        drop(pieces);
        let before = resident_anon_kb();
        clm::memory::release_freed();
        let after = resident_anon_kb();
        drop(newest);
        assert!(
            before - after > 32 * 1024,
            "resident heap {before} kB before, {after} kB after"
        );
    })
    .join()
    .unwrap();
}
