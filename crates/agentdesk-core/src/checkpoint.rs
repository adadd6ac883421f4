//! SQLite's WAL checkpoints, off the writer.
//!
//! In WAL mode every commit appends its pages to the `-wal` file, and a checkpoint copies them
//! back into the database file and syncs both (with `synchronous=NORMAL` the only syncs there
//! are). By default the connection whose commit takes the WAL past 1,000 pages checkpoints there
//! and then: on our single writer that put a copy of ~4 MiB and two syncs inside about every
//! fiftieth write request, holding the one write lock meanwhile. Here a thread of its own runs a
//! passive checkpoint (it never takes the write lock and never waits) every 25 ms while writes
//! come in, so the writer mostly only appends: 10-15 % more creates and updates per second
//! (BENCHMARKS.md, "Member reads"). The writer keeps a threshold of its own, 4,096 pages: under
//! a steady stream of writes the WAL is never wholly copied at the moment a write begins, so
//! it could not start over from its beginning; the writer's own checkpoint then copies the
//! little this thread has not, and the WAL restarts (it stays under ~20 MB). It is also the net
//! should this thread fall behind or stop.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How often the thread checkpoints while the writer appends.
const BUSY_EVERY: Duration = Duration::from_millis(25);

/// The longest pause between looks while nothing is written (it doubles from [`BUSY_EVERY`]).
const IDLE_EVERY: Duration = Duration::from_secs(1);

/// The writer's own threshold, in pages (16 MiB of 4 KiB pages; SQLite's default is 1,000).
pub const WRITER_AUTOCHECKPOINT_PAGES: u32 = 4_096;

/// A running checkpoint thread; stopped by [`Checkpointer::stop`] or when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing the SQLite file at `path` (which the writer has opened in WAL mode).
    /// `None` when the file cannot be opened for writing or the thread cannot start: the
    /// writer's own threshold then keeps the WAL bounded, as without this.
    pub fn start(path: &str) -> Option<Self> {
        let conn = open(path)
            .map_err(|e| tracing::warn!(error = %e, "cannot open SQLite for checkpoints; the writer checkpoints"))
            .ok()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &signal))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the checkpoint thread; the writer checkpoints"))
            .ok()?;
        Some(Self {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread after its current checkpoint (if any), and waits for it.
    pub fn stop(&self) {
        self.signal_stop();
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    fn signal_stop(&self) {
        let (stopped, wake) = &*self.stop;
        if let Ok(mut stopped) = stopped.lock() {
            *stopped = true;
        }
        wake.notify_all();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

fn open(path: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A passive checkpoint never waits on a lock; nothing else runs on this connection.
    conn.busy_timeout(Duration::ZERO)?;
    // Its own commits (none) must not checkpoint either way; the thread decides.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, wake) = stop;
    let mut every = BUSY_EVERY;
    let mut last = None;
    loop {
        {
            let Ok(guard) = stopped.lock() else { return };
            let Ok((guard, _)) = wake.wait_timeout_while(guard, every, |stopped| !*stopped) else {
                return;
            };
            if *guard {
                return;
            }
        }
        match checkpoint(conn) {
            Ok(state) => {
                // Back off while the WAL does not change (an idle server wakes once a second).
                every = if last == Some(state) {
                    (every * 2).min(IDLE_EVERY)
                } else {
                    BUSY_EVERY
                };
                last = Some(state);
            }
            Err(e) => {
                // Busy (another process checkpoints) or an I/O error: the next round tries
                // again, and the writer's own threshold bounds the WAL meanwhile.
                tracing::debug!(error = %e, "WAL checkpoint did not run");
                every = BUSY_EVERY;
            }
        }
    }
}

/// One passive checkpoint: copies what no reader still needs and syncs; never waits. Returns
/// the WAL's frames and how many of them are in the database file.
fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database file's size: what checkpoints have copied into it (commits go to the WAL).
    fn main_file_len(path: &str) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(BUSY_EVERY);
        }
        false
    }

    #[test]
    fn the_thread_copies_the_writers_pages_into_the_database_file_until_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("db.sqlite");
        let path = path.to_str().expect("utf-8 path");
        let writer = Connection::open(path).expect("open");
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .expect("wal");
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .expect("threshold");
        writer
            .execute_batch("CREATE TABLE t (v BLOB); INSERT INTO t VALUES (randomblob(400000));")
            .expect("write");
        std::thread::sleep(BUSY_EVERY * 12);
        assert!(
            main_file_len(path) < 400_000,
            "without the thread the writer's pages stay in the WAL"
        );

        let checkpointer = Checkpointer::start(path).expect("start");
        assert!(
            wait_for(|| main_file_len(path) >= 400_000),
            "the thread copied the commit into the database file"
        );

        checkpointer.stop();
        let before = main_file_len(path);
        writer
            .execute("INSERT INTO t VALUES (randomblob(400000))", [])
            .expect("write after stop");
        std::thread::sleep(IDLE_EVERY * 2);
        assert_eq!(
            main_file_len(path),
            before,
            "a stopped thread copies nothing"
        );
        let frames: i64 = writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .expect("checkpoint");
        assert!(frames > 0, "the second commit waited in the WAL");
        checkpointer.stop();
    }

    #[test]
    fn a_missing_file_starts_no_thread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("absent.sqlite");
        assert!(Checkpointer::start(path.to_str().expect("utf-8")).is_none());
    }
}
