//! The log's writer thread and the queue in front of it.
//!
//! A thread that logs formats its line and queues it; it neither writes
//! nor wakes the writer while the writer is busy. The writer takes what has
//! queued, writes it in one go, then sleeps [`BATCH_WINDOW`] before looking
//! again; only when a look finds nothing does it wait to be woken by the
//! next line, which it writes at once. Woken and writing once per line, the
//! writer took about a sixth of the OCSP responder's CPU at 20,000 answers
//! a second (docs/performance.md). Nothing is dropped: a full queue makes
//! loggers wait.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long lines may wait for the writer while lines keep coming.
const BATCH_WINDOW: Duration = Duration::from_millis(5);
/// Lines the queue holds before loggers wait.
const QUEUE_LINES: usize = 128_000;

/// Queues whole lines: the fmt layer writes each event with one call.
#[derive(Clone)]
pub(super) struct Lines(SyncSender<Vec<u8>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MakeWriter<'_> for Lines {
    type Writer = Lines;

    fn make_writer(&self) -> Lines {
        self.clone()
    }
}

/// Keep it while the process logs: dropping it writes what is queued and
/// stops the writer.
#[must_use = "dropping the guard stops the log writer"]
pub struct WriterGuard {
    stop: Arc<AtomicBool>,
    /// Wakes a writer waiting for lines: an empty line writes nothing.
    wake: SyncSender<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.send(Vec::new());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The queue's sending side and the guard of the thread writing to `out`.
pub(super) fn spawn(out: impl Write + Send + 'static) -> std::io::Result<(Lines, WriterGuard)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("clm-log".into())
        .spawn(move || write_lines(&rx, out, &stopping))?;
    Ok((
        Lines(tx.clone()),
        WriterGuard {
            stop,
            wake: tx,
            thread: Some(thread),
        },
    ))
}

fn write_lines(rx: &Receiver<Vec<u8>>, out: impl Write, stop: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Whether lines came since the last look: then more are likely, and
    // the writer sleeps a window rather than be woken for each.
    let mut found = false;
    loop {
        let disconnected = loop {
            match rx.try_recv() {
                Ok(line) => {
                    found = true;
                    // Nowhere to report a failed log write; keep going.
                    let _ = out.write_all(&line);
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        let _ = out.flush();
        if disconnected || stop.load(Ordering::Acquire) {
            return;
        }
        if std::mem::take(&mut found) {
            std::thread::sleep(BATCH_WINDOW);
            continue;
        }
        // Quiet for a whole window: wait for the next line (or the
        // guard's empty one), which is written at once.
        match rx.recv() {
            Ok(line) => {
                found = true;
                let _ = out.write_all(&line);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A `Write` whose bytes and write calls the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_the_guard_flushes_them() {
        let sink = Sink::default();
        let (lines, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = lines.make_writer();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        for t in 0..4 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
        // Batched: far fewer writes to the file than lines.
        assert!(writes < 20_000 / 10, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_lone_line_reaches_the_file_without_more_lines_or_the_guard() {
        let sink = Sink::default();
        let (lines, _guard) = spawn(sink.clone()).unwrap();
        lines.make_writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.0.lock().unwrap().0 != b"alone\n" {
            assert!(std::time::Instant::now() < deadline, "line not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
