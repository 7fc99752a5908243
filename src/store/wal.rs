//! SQLite's write-ahead log, kept short when readers never let it start
//! over.
//!
//! After a commit SQLite copies the log back into the database (the
//! automatic checkpoint, past 1,000 pages) and writes the log from its
//! beginning again once every frame is copied and no reader still reads
//! one. A reader that began before the last commit stops the copy at what
//! it sees, so readers that overlap without pause — a busy API, the
//! server's pollers and jobs beside a bulk writer — keep the log from ever
//! starting over, and it grows by every transaction. In the benchmark's
//! fill of 900,000 revocations it reached 7 GB, and the wal-index that
//! every process with the database open maps (32 KiB per 4,096 frames)
//! added 15 MB to the server's memory (docs/performance.md).
//!
//! [`checkpoint_if_long`] is the remedy, run every few seconds: past
//! [`LONG_LOG_FRAMES`] it asks for a TRUNCATE checkpoint, which waits (the
//! connection's busy timeout) for the readers of frames not yet copied —
//! once every frame is copied, new readers read the database, not the log —
//! and then empties the log file. It holds the write lock while it waits,
//! so writers pause for as long as the oldest of those reads lasts (reads
//! are short; a CRL's read of a million revocations takes a second or
//! two) — only when the log is already long, never in the steady state.
//! PostgreSQL has nothing to do here.

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, Statement};

use super::StoreResult;
use super::error::corrupt;

/// About 64 MiB of log at SQLite's 4 KiB pages: far above what the
/// automatic checkpoint leaves when it can work (1,000 pages and the
/// transaction in flight), so a healthy log is never touched.
const LONG_LOG_FRAMES: i64 = 16_384;

/// A TRUNCATE checkpoint the log's length called for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Frames in the log before it.
    pub frames: i64,
    /// The log was emptied; `false` when a reader or writer outlasted the
    /// busy timeout (the next run tries again).
    pub emptied: bool,
}

/// Checkpoints `db`'s log if it is longer than [`LONG_LOG_FRAMES`]; run on
/// the writer's connection, so that it queues behind transactions in
/// flight instead of failing beside them.
pub(super) async fn checkpoint_if_long(db: &DatabaseConnection) -> StoreResult<Option<Checkpoint>> {
    checkpoint_if_longer(db, LONG_LOG_FRAMES).await
}

async fn checkpoint_if_longer(
    db: &DatabaseConnection,
    long: i64,
) -> StoreResult<Option<Checkpoint>> {
    if db.get_database_backend() != DatabaseBackend::Sqlite {
        return Ok(None);
    }
    // PASSIVE copies what it can without waiting for anyone (what the
    // automatic checkpoint does after every commit) and tells the length.
    let (_, frames) = checkpoint(db, "PASSIVE").await?;
    if frames <= long {
        return Ok(None);
    }
    let (busy, _) = checkpoint(db, "TRUNCATE").await?;
    Ok(Some(Checkpoint {
        frames,
        emptied: !busy,
    }))
}

/// `PRAGMA wal_checkpoint(mode)`: whether it was kept from finishing, and
/// the frames in the log (-1 when the database is not in WAL mode).
async fn checkpoint(db: &DatabaseConnection, mode: &str) -> StoreResult<(bool, i64)> {
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Sqlite,
            format!("PRAGMA wal_checkpoint({mode})"),
        ))
        .await?
        .ok_or_else(|| corrupt("wal_checkpoint returned no row"))?;
    Ok((
        row.try_get_by_index::<i64>(0)? != 0,
        row.try_get_by_index::<i64>(1)?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sea_orm::{DatabaseTransaction, TransactionTrait};

    use super::*;

    async fn run(db: &impl ConnectionTrait, sql: &str) {
        db.execute_unprepared(sql).await.unwrap();
    }

    /// A reader's snapshot, held until the transaction ends.
    async fn snapshot(reader: &DatabaseConnection) -> DatabaseTransaction {
        let txn = reader.begin().await.unwrap();
        run(&txn, "SELECT count(*) FROM t").await;
        txn
    }

    /// Two readers take turns so that one of them always holds a snapshot
    /// older than the last commit, as overlapping polls and requests do:
    /// the log never starts over. The job's checkpoint waits for the last
    /// old reader and empties it.
    #[tokio::test]
    async fn a_log_that_readers_keep_from_starting_over_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let writer = super::super::open(&url, 1, false).await.unwrap();
        run(&writer, "CREATE TABLE t (x BLOB)").await;
        let readers = [
            super::super::open(&url, 1, true).await.unwrap(),
            super::super::open(&url, 1, true).await.unwrap(),
        ];
        let mut held = snapshot(&readers[0]).await;
        assert_eq!(checkpoint_if_longer(&writer, 1_000).await.unwrap(), None);
        for round in 1..=6 {
            // About 300 pages a round; the automatic checkpoint runs from
            // 1,000.
            run(
                &writer,
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) \
                 INSERT INTO t SELECT randomblob(4000) FROM n",
            )
            .await;
            let newer = snapshot(&readers[round % 2]).await;
            std::mem::replace(&mut held, newer).commit().await.unwrap();
        }
        let (_, frames) = checkpoint(&writer, "PASSIVE").await.unwrap();
        assert!(frames > 1_500, "the log started over: {frames} frames");

        // The last reader ends while the checkpoint waits for it.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            held.commit().await.unwrap();
        });
        let done = checkpoint_if_longer(&writer, 1_000).await.unwrap();
        assert_eq!(
            done,
            Some(Checkpoint {
                frames,
                emptied: true
            })
        );
        let wal = std::fs::metadata(dir.path().join("db-wal")).unwrap();
        assert_eq!(wal.len(), 0);
        assert_eq!(checkpoint_if_longer(&writer, 1_000).await.unwrap(), None);
    }
}
