//! The verifier's reader of one audit log: every entry in seq order, each
//! with the hash of its content, computed beside the read.
//!
//! Reading (the database, decoding rows) and hashing take most of a
//! verification's time, and one entry's hash does not depend on another's,
//! so both happen ahead of the verifier on other threads: seq ranges the
//! verifier announces (the ranges its seals cover, where every seq but a
//! seal's few gaps holds an entry) are read several at once, each on a
//! connection of its own. Beyond what was announced, or where a range
//! turns out to be mostly empty, reads go page after page by seq (a forged
//! seal may announce a billion seqs; paging by seq skips what is empty).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use tokio::task::JoinHandle;

use super::error::{ServiceError, ServiceResult};
use crate::domain::audit::{AuditEntry, entry_hash};
use crate::store::AuditStore;

/// An entry and the hash of its content as read (not the stored hash).
pub(super) struct Hashed {
    pub entry: AuditEntry,
    pub hash: [u8; 32],
}

type PageFuture<T> = Pin<Box<dyn Future<Output = ServiceResult<Vec<T>>> + Send>>;

/// What the cursor reads from: items with `after < seq <= to` (`None`: to
/// the end), in seq order, at most `limit`; at most one item per seq.
pub(super) trait Pages: Clone + Send + 'static {
    type Item: Send + 'static;
    fn seq(item: &Self::Item) -> i64;
    fn read(&self, after: i64, to: Option<i64>, limit: u64) -> PageFuture<Self::Item>;
}

impl Pages for AuditStore {
    type Item = Hashed;

    fn seq(item: &Hashed) -> i64 {
        item.entry.seq
    }

    fn read(&self, after: i64, to: Option<i64>, limit: u64) -> PageFuture<Hashed> {
        let store = self.clone();
        Box::pin(async move {
            let log = store.log();
            let entries = store.read_entries(after, to, limit).await?;
            Ok(entries
                .into_iter()
                .map(|entry| Hashed {
                    hash: entry_hash(log, &entry.fields()),
                    entry,
                })
                .collect())
        })
    }
}

/// Reads in flight at most while reading announced ranges.
const AHEAD: usize = 3;

struct Read<T> {
    /// The read returns entries with `after < seq <= to` (`None`: to the
    /// end of the log), at most `page_size` of them.
    after: i64,
    to: Option<i64>,
    task: JoinHandle<ServiceResult<Vec<T>>>,
}

pub(super) struct EntryCursor<P: Pages = AuditStore> {
    source: P,
    /// Entries per read.
    page_size: u64,
    page: std::vec::IntoIter<P::Item>,
    peeked: Option<P::Item>,
    /// In seq order; together they cover the seqs after what was handed out
    /// up to `next_after`.
    reads: VecDeque<Read<P::Item>>,
    /// Where the next read starts, once `reads` is empty or ranged.
    next_after: i64,
    /// Seqs up to here were announced dense.
    announced_to: i64,
    /// A page-by-seq read is in flight: where it ends is unknown until it
    /// returns.
    paging: bool,
    /// The last ranged read found the range mostly empty.
    sparse: bool,
    /// The end of the log was read.
    done: bool,
}

impl<P: Pages> EntryCursor<P> {
    /// Entries with a seq above `after`.
    pub(super) fn new(source: P, after: i64, page_size: u64) -> Self {
        let mut cursor = Self {
            source,
            page_size,
            page: Vec::new().into_iter(),
            peeked: None,
            reads: VecDeque::new(),
            next_after: after,
            announced_to: after,
            paging: false,
            sparse: false,
            done: false,
        };
        cursor.read_ahead();
        cursor
    }

    /// Seqs up to `to` are expected to hold entries: read them ahead.
    pub(super) fn announce(&mut self, to: i64) {
        self.announced_to = self.announced_to.max(to);
        self.read_ahead();
    }

    pub(super) async fn peek(&mut self) -> ServiceResult<Option<&P::Item>> {
        if self.peeked.is_none() {
            self.peeked = self.next_inner().await?;
        }
        Ok(self.peeked.as_ref())
    }

    pub(super) async fn next(&mut self) -> ServiceResult<Option<P::Item>> {
        match self.peeked.take() {
            Some(e) => Ok(Some(e)),
            None => self.next_inner().await,
        }
    }

    async fn next_inner(&mut self) -> ServiceResult<Option<P::Item>> {
        loop {
            if let Some(e) = self.page.next() {
                return Ok(Some(e));
            }
            let Some(read) = self.reads.pop_front() else {
                return Ok(None);
            };
            let rows = read.task.await.map_err(ServiceError::internal)??;
            let (first, last) = (rows.first().map(P::seq), rows.last().map(P::seq));
            if self.paging && self.reads.is_empty() {
                // The page-by-seq read just returned: now its end is known.
                self.paging = false;
                match (
                    rows.len() as u64 == self.page_size,
                    first.zip(last),
                    read.to,
                ) {
                    (true, Some((first, last)), _) => {
                        self.next_after = last;
                        self.sparse = !dense(rows.len(), first.saturating_sub(1), last);
                    }
                    (_, _, Some(to)) => self.next_after = to,
                    (_, _, None) => self.done = true,
                }
            } else if let Some(to) = read.to {
                self.sparse = !dense(rows.len(), read.after, to);
            }
            self.page = rows.into_iter();
            self.read_ahead();
        }
    }

    /// Starts reads until enough are in flight.
    fn read_ahead(&mut self) {
        while !self.done && !self.paging {
            let ranged = !self.sparse && self.next_after < self.announced_to;
            if ranged && self.reads.len() < AHEAD {
                let to = self
                    .next_after
                    .saturating_add(self.page_size as i64)
                    .min(self.announced_to);
                self.start(Some(to));
                self.next_after = to;
            } else if !ranged && self.reads.is_empty() {
                let to = (self.next_after < self.announced_to).then_some(self.announced_to);
                self.start(to);
                self.paging = true;
            } else {
                break;
            }
        }
    }

    fn start(&mut self, to: Option<i64>) {
        let after = self.next_after;
        let task = tokio::spawn(self.source.read(after, to, self.page_size));
        self.reads.push_back(Read { after, to, task });
    }
}

/// At least every other seq of (`after`, `to`] holds one of the `count`
/// entries read from it.
fn dense(count: usize, after: i64, to: i64) -> bool {
    (count as i128) * 2 >= i128::from(to) - i128::from(after)
}

impl<P: Pages> Drop for EntryCursor<P> {
    // A verification that stops at a bad entry reads no further.
    fn drop(&mut self) {
        for read in &self.reads {
            read.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A log holding these seqs; counts its reads.
    #[derive(Clone)]
    struct Seqs {
        seqs: Arc<Vec<i64>>,
        reads: Arc<AtomicUsize>,
    }

    impl Seqs {
        fn new(mut seqs: Vec<i64>) -> Self {
            seqs.sort_unstable();
            Self {
                seqs: Arc::new(seqs),
                reads: Arc::default(),
            }
        }
    }

    impl Pages for Seqs {
        type Item = i64;

        fn seq(item: &i64) -> i64 {
            *item
        }

        fn read(&self, after: i64, to: Option<i64>, limit: u64) -> PageFuture<i64> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let page = self
                .seqs
                .iter()
                .copied()
                .filter(|s| *s > after && to.is_none_or(|to| *s <= to))
                .take(limit as usize)
                .collect();
            Box::pin(async move { Ok(page) })
        }
    }

    async fn drain(cursor: &mut EntryCursor<Seqs>) -> Vec<i64> {
        let mut out = Vec::new();
        while let Some(s) = cursor.next().await.unwrap() {
            out.push(s);
        }
        out
    }

    #[tokio::test]
    async fn every_entry_comes_once_in_order_across_ranges_gaps_and_pages() {
        // Dense with gaps, a stretch announced late, entries past every
        // announcement, and the extremes of the seq type.
        let mut seqs: Vec<i64> = (1..=2_500).filter(|s| s % 97 != 0).collect();
        seqs.extend([-5, i64::MIN + 1, 4_000, 4_001, 1_000_000_000_000, i64::MAX]);
        let log = Seqs::new(seqs);
        let mut cursor = EntryCursor::new(log.clone(), i64::MIN, 100);
        cursor.announce(1_200);
        let mut out = Vec::new();
        for _ in 0..1_000 {
            out.push(cursor.next().await.unwrap().unwrap());
        }
        cursor.announce(2_500);
        assert_eq!(cursor.peek().await.unwrap(), Some(&log.seqs[1_000]));
        out.extend(drain(&mut cursor).await);
        assert_eq!(out, *log.seqs);
    }

    #[tokio::test]
    async fn a_forged_bound_of_a_billion_empty_seqs_costs_a_few_reads() {
        let log = Seqs::new((1..=300).collect());
        let mut cursor = EntryCursor::new(log.clone(), i64::MIN, 100);
        cursor.announce(300);
        cursor.announce(1_000_000_000);
        assert_eq!(drain(&mut cursor).await, *log.seqs);
        let reads = log.reads.load(Ordering::SeqCst);
        assert!(reads <= 8, "{reads} reads");
    }

    #[tokio::test]
    async fn announced_ranges_are_read_ahead_in_parallel() {
        let log = Seqs::new((1..=10_000).collect());
        let mut cursor = EntryCursor::new(log.clone(), i64::MIN, 100);
        cursor.announce(10_000);
        assert_eq!(cursor.next().await.unwrap(), Some(1));
        // The first page, then AHEAD ranges asked for at once.
        assert_eq!(log.reads.load(Ordering::SeqCst), 1 + AHEAD);
        assert_eq!(drain(&mut cursor).await.len(), 9_999);
    }
}
