//! Embedded `JobStore` and `WorkQueue` in one SQLite file: the local server's defaults.
//!
//! The queue keeps SQS's semantics (visibility timeout, receive count, dead-letter queue after
//! N receives) so the domain is exercised locally exactly as it runs on AWS.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use crate::job::{ChunkRecord, ChunkResult, ChunkSpec, CountGroup, Job, JobState, OutputFile};
use crate::model::JobId;
use crate::ports::{
    BoxError, ChunkCompletion, Delivery, JobStore, Naming, QueueError, StoreError, WorkQueue,
};
use crate::schedule::ScheduleState;
use crate::usage::Usage;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    chunks_done INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, updated_at);
CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs(expires_at);
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    spec TEXT NOT NULL,
    result TEXT,
    published TEXT,
    renamed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS counters (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    next INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS outputs (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    grp TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages(queue, visible_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_receipt ON messages(receipt);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_groups (
    queue TEXT NOT NULL,
    grp TEXT NOT NULL,
    served INTEGER NOT NULL,
    PRIMARY KEY (queue, grp)
);
"#;

/// The index of message groups, made once the `grp` column exists (a database made before
/// message groups gets the column first).
const GROUPS_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS messages_by_group ON messages(queue, grp, visible_at)";

/// One SQLite database shared by the job store and the queues.
#[derive(Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SqliteOpenError {
    #[error("cannot open SQLite database `{path}`")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

fn backend(e: impl Into<BoxError>) -> StoreError {
    StoreError::Backend(e.into())
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// Statements prepared once per connection and reused: parsing the SQL costs more than most
/// of these statements take to run.
trait Cached {
    fn run(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }

    fn row<T>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// A transaction begun and ended by cached statements (rusqlite's `Transaction` parses its
/// `BEGIN` and `COMMIT` anew each time, a third of a short transaction's cost). Rolled back
/// when dropped without a successful `commit`.
struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Tx<'c> {
    /// `immediate` takes the write lock at once (as `BEGIN IMMEDIATE`), for a transaction
    /// that reads and then writes what it read.
    fn begin(conn: &'c Connection, immediate: bool) -> rusqlite::Result<Self> {
        conn.run(
            if immediate {
                "BEGIN IMMEDIATE"
            } else {
                "BEGIN"
            },
            [],
        )?;
        Ok(Tx { conn, done: false })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.run("COMMIT", [])?;
        self.done = true;
        Ok(())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.run("ROLLBACK", []);
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl SqliteDb {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path) -> Result<Self, SqliteOpenError> {
        let err = |source| SqliteOpenError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        let db = Self::init(conn).map_err(err)?;
        // Commits leave their pages in the write-ahead log; moving them into the database
        // (and the `fsync` that takes) happens on a connection of its own, off the callers'
        // threads.
        db.conn
            .lock()
            .map_err(|_| err(rusqlite::Error::InvalidQuery))?
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(err)?;
        spawn_checkpointer(path.to_path_buf(), Arc::downgrade(&db.conn));
        Ok(db)
    }

    /// A private in-memory database, for tests.
    pub fn in_memory() -> Result<Self, SqliteOpenError> {
        let conn = Connection::open_in_memory().map_err(|source| SqliteOpenError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::init(conn).map_err(|source| SqliteOpenError::Open {
            path: ":memory:".into(),
            source,
        })
    }

    fn init(conn: Connection) -> Result<Self, rusqlite::Error> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        // Plans that never depend on the values bound: without this, SQLite (built with
        // STAT4) recompiles a cached statement whose parameters might sway its plan each
        // time they are bound, which made the queue's receive parse its SELECT on every call.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        // Small pages for a new database (an existing one keeps its own): a transaction here
        // changes a few short rows, and the write-ahead log takes whole pages.
        conn.pragma_update(None, "page_size", 1024)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let has_groups: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'grp'")?
            .exists([])?;
        if !has_groups {
            // Its messages become one group (`grp` defaults to ''), which takes turns like
            // any other from now on.
            conn.execute_batch(
                "ALTER TABLE messages ADD COLUMN grp TEXT NOT NULL DEFAULT '';
                 INSERT OR IGNORE INTO queue_groups (queue, grp, served)
                     SELECT DISTINCT queue, grp, 0 FROM messages;",
            )?;
        }
        conn.execute_batch(GROUPS_INDEX)?;
        Ok(SqliteDb {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the calling thread. A statement here takes
    /// microseconds and never waits for the disk (a commit appends to the write-ahead log
    /// without `fsync`, checkpoints run elsewhere), which is less than handing it to a
    /// blocking thread and waking the caller again would cost.
    async fn with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<BoxError>,
        F: FnOnce(&mut Connection) -> Result<T, E>,
    {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| E::from("sqlite connection mutex poisoned".into()))?;
        f(&mut guard)
    }
}

impl SqliteDb {
    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`: it reads, then writes what it
    /// read), committed when `f` succeeds and rolled back otherwise.
    async fn write_tx<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c, true).map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }
}

/// The groups of a queue, the one served longest ago first.
const GROUPS_BY_TURN: &str = "SELECT grp FROM queue_groups WHERE queue = ?1 ORDER BY served, grp";

/// The message a receive takes from a group: its first visible one, oldest first.
const RECEIVE_FROM_GROUP: &str = "SELECT id, body, receive_count FROM messages
     WHERE queue = ?1 AND grp = ?2 AND visible_at <= ?3
     ORDER BY visible_at, id LIMIT 1";

/// Forgets a group once it has no message left in the queue.
const DROP_EMPTY_GROUP: &str = "DELETE FROM queue_groups WHERE queue = ?1 AND grp = ?2
     AND NOT EXISTS (SELECT 1 FROM messages WHERE queue = ?1 AND grp = ?2)";

/// How often the write-ahead log is folded back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints the database at `path` on a thread and connection of its own until the
/// database `alive` points at is dropped. A passive checkpoint never blocks writers; the
/// log is bounded by what is written between two checkpoints.
fn spawn_checkpointer(path: std::path::PathBuf, alive: std::sync::Weak<Mutex<Connection>>) {
    let run = move || {
        let conn = match Connection::open(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "SQLite checkpointer cannot open the database; the write-ahead log will grow");
                return;
            }
        };
        let _ = conn.busy_timeout(Duration::from_secs(1));
        while alive.strong_count() > 0 {
            std::thread::sleep(CHECKPOINT_EVERY);
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "SQLite checkpoint skipped");
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "cannot start the SQLite checkpointer; the write-ahead log will grow");
    }
}

impl From<BoxError> for StoreError {
    fn from(e: BoxError) -> Self {
        StoreError::Backend(e)
    }
}

impl From<BoxError> for QueueError {
    fn from(e: BoxError) -> Self {
        QueueError::Backend(e)
    }
}

/// `JobStore` on [`SqliteDb`].
#[derive(Clone)]
pub struct SqliteJobStore {
    db: SqliteDb,
}

impl SqliteJobStore {
    pub fn new(db: SqliteDb) -> Self {
        SqliteJobStore { db }
    }
}

fn read_job(doc: String, chunks_done: i64) -> Result<Job, StoreError> {
    let mut job: Job = serde_json::from_str(&doc).map_err(backend)?;
    job.chunks_done = u32::try_from(chunks_done).map_err(backend)?;
    Ok(job)
}

fn select_jobs(
    conn: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Job>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map(p, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(backend)?;
    rows.map(|r| r.map_err(backend).and_then(|(d, c)| read_job(d, c)))
        .collect()
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        let doc = serde_json::to_string(job).map_err(backend)?;
        let job = job.clone();
        self.db
            .with(move |c| {
                let n = c
                    .run(
                        "INSERT OR IGNORE INTO jobs (id, state, version, updated_at, expires_at, chunks_done, doc)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            job.id.as_str(),
                            job.state.as_str(),
                            job.version as i64,
                            ms(job.updated_at),
                            ms(job.expires_at),
                            i64::from(job.chunks_done),
                            doc
                        ],
                    )
                    .map_err(backend)?;
                if n == 0 {
                    Err(StoreError::AlreadyExists)
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let row: Option<(String, i64)> = c
                    .row(
                        "SELECT doc, chunks_done FROM jobs WHERE id = ?1",
                        [id.as_str()],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(backend)?;
                row.map(|(d, n)| read_job(d, n)).transpose()
            })
            .await
    }

    async fn state(&self, id: &JobId) -> Result<Option<JobState>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let state: Option<String> = c
                    .row("SELECT state FROM jobs WHERE id = ?1", [id.as_str()], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(backend)?;
                state
                    .map(|s| {
                        JobState::parse(&s)
                            .ok_or_else(|| backend(format!("job with an unknown state `{s}`")))
                    })
                    .transpose()
            })
            .await
    }

    /// A local query costs microseconds: a chunk looks after every batch, so that a cancel
    /// stops it within one.
    fn state_check_interval(&self) -> Duration {
        Duration::ZERO
    }

    async fn update(&self, job: &Job, expected_version: u64) -> Result<(), StoreError> {
        let doc = serde_json::to_string(job).map_err(backend)?;
        let job = job.clone();
        self.db
            .with(move |c| {
                let n = c
                    .run(
                        "UPDATE jobs SET state = ?2, version = ?3, updated_at = ?4, expires_at = ?5, doc = ?6
                         WHERE id = ?1 AND version = ?7",
                        params![
                            job.id.as_str(),
                            job.state.as_str(),
                            job.version as i64,
                            ms(job.updated_at),
                            ms(job.expires_at),
                            doc,
                            expected_version as i64
                        ],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    return Ok(());
                }
                let exists: bool = c
                    .row("SELECT 1 FROM jobs WHERE id = ?1", [job.id.as_str()], |_| Ok(()))
                    .optional()
                    .map_err(backend)?
                    .is_some();
                Err(if exists { StoreError::Conflict } else { StoreError::NotFound })
            })
            .await
    }

    async fn put_chunks(&self, id: &JobId, chunks: &[ChunkSpec]) -> Result<(), StoreError> {
        let id = id.clone();
        let rows: Vec<(u32, String)> = chunks
            .iter()
            .map(|c| Ok((c.index, serde_json::to_string(c).map_err(backend)?)))
            .collect::<Result<_, StoreError>>()?;
        self.db
            .with(move |c| {
                let tx = Tx::begin(c, false).map_err(backend)?;
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT OR IGNORE INTO chunks (job_id, idx, spec) VALUES (?1, ?2, ?3)",
                        )
                        .map_err(backend)?;
                    for (idx, spec) in &rows {
                        stmt.execute(params![id.as_str(), idx, spec])
                            .map_err(backend)?;
                    }
                }
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn chunk(&self, id: &JobId, index: u32) -> Result<Option<ChunkRecord>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                c.row(
                    "SELECT spec, result, published, renamed FROM chunks WHERE job_id = ?1 AND idx = ?2",
                    params![id.as_str(), index],
                    chunk_row,
                )
                .optional()
                .map_err(backend)?
                .map(|row| chunk_record(&row))
                .transpose()
            })
            .await
    }

    async fn chunks(&self, id: &JobId) -> Result<Vec<ChunkRecord>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT spec, result, published, renamed FROM chunks WHERE job_id = ?1 ORDER BY idx",
                    )
                    .map_err(backend)?;
                let rows = stmt.query_map([id.as_str()], chunk_row).map_err(backend)?;
                rows.map(|r| chunk_record(&r.map_err(backend)?)).collect()
            })
            .await
    }

    async fn complete_chunk(
        &self,
        id: &JobId,
        index: u32,
        result: &ChunkResult,
        now: DateTime<Utc>,
        group: Option<CountGroup>,
    ) -> Result<ChunkCompletion, StoreError> {
        let result = serde_json::to_string(result).map_err(backend)?;
        self.db
            .write_tx(|tx| complete_in(tx, id, index, &result, now, group))
            .await
    }

    async fn reserve(&self, id: &JobId, counter: &str, n: u32) -> Result<u64, StoreError> {
        self.db.write_tx(|tx| reserve_in(tx, id, counter, n)).await
    }

    async fn set_published(
        &self,
        id: &JobId,
        index: u32,
        files: &[OutputFile],
    ) -> Result<Vec<OutputFile>, StoreError> {
        let body = serde_json::to_string(files).map_err(backend)?;
        self.db
            .write_tx(|tx| set_published_in(tx, id, index, &body))
            .await
    }

    /// One transaction: the completion, and the names when it is the first.
    async fn complete_and_name(
        &self,
        id: &JobId,
        index: u32,
        result: &ChunkResult,
        now: DateTime<Utc>,
        group: Option<CountGroup>,
        naming: Option<Naming<'_>>,
    ) -> Result<(ChunkCompletion, Option<Vec<OutputFile>>), StoreError> {
        let result = serde_json::to_string(result).map_err(backend)?;
        self.db
            .write_tx(|tx| {
                let done = complete_in(tx, id, index, &result, now, group)?;
                let named = match naming {
                    Some(naming) if done.names_files() => {
                        let firsts = naming
                            .counters
                            .iter()
                            .map(|(counter, n)| reserve_in(tx, id, counter, *n))
                            .collect::<Result<Vec<u64>, StoreError>>()?;
                        let body =
                            serde_json::to_string(&(naming.name)(&firsts)).map_err(backend)?;
                        Some(set_published_in(tx, id, index, &body)?)
                    }
                    _ => None,
                };
                Ok((done, named))
            })
            .await
    }

    async fn mark_renamed(&self, id: &JobId, index: u32) -> Result<(), StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let n = c
                    .run(
                        "UPDATE chunks SET renamed = 1 WHERE job_id = ?1 AND idx = ?2",
                        params![id.as_str(), index],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    Ok(())
                } else {
                    Err(StoreError::NotFound)
                }
            })
            .await
    }

    async fn heartbeat(&self, id: &JobId, now: DateTime<Utc>) -> Result<(), StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                c.run(
                    "UPDATE jobs SET updated_at = max(updated_at, ?2) WHERE id = ?1",
                    params![id.as_str(), ms(now)],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await
    }

    async fn put_outputs(&self, id: &JobId, files: &[OutputFile]) -> Result<(), StoreError> {
        let id = id.clone();
        let rows: Vec<String> = files
            .iter()
            .map(|f| serde_json::to_string(f).map_err(backend))
            .collect::<Result<_, _>>()?;
        self.db
            .with(move |c| {
                let tx = Tx::begin(c, false).map_err(backend)?;
                tx.run("DELETE FROM outputs WHERE job_id = ?1", [id.as_str()])
                    .map_err(backend)?;
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT INTO outputs (job_id, seq, file) VALUES (?1, ?2, ?3)",
                        )
                        .map_err(backend)?;
                    for (i, f) in rows.iter().enumerate() {
                        stmt.execute(params![id.as_str(), i as i64, f])
                            .map_err(backend)?;
                    }
                }
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn outputs(&self, id: &JobId) -> Result<Vec<OutputFile>, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT file FROM outputs WHERE job_id = ?1 ORDER BY seq")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([id.as_str()], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.map(|r| serde_json::from_str(&r.map_err(backend)?).map_err(backend))
                    .collect()
            })
            .await
    }

    async fn stalled(&self, before: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        let active: Vec<&'static str> = [
            JobState::Accepted,
            JobState::Planning,
            JobState::Running,
            JobState::Finalizing,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        self.db
            .with(move |c| {
                select_jobs(
                    c,
                    "SELECT doc, chunks_done FROM jobs
                     WHERE state IN (?1, ?2, ?3, ?4) AND updated_at < ?5",
                    params![active[0], active[1], active[2], active[3], ms(before)],
                )
            })
            .await
    }

    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<Job>, StoreError> {
        self.db
            .with(move |c| {
                select_jobs(
                    c,
                    "SELECT doc, chunks_done FROM jobs WHERE expires_at < ?1",
                    params![ms(now)],
                )
            })
            .await
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let tx = Tx::begin(c, false).map_err(backend)?;
                for table in ["outputs", "chunks", "counters", "usage"] {
                    tx.run(
                        &format!("DELETE FROM {table} WHERE job_id = ?1"),
                        [id.as_str()],
                    )
                    .map_err(backend)?;
                }
                tx.run("DELETE FROM jobs WHERE id = ?1", [id.as_str()])
                    .map_err(backend)?;
                tx.commit().map_err(backend)
            })
            .await
    }

    async fn record_usage(&self, id: &JobId, key: &str, usage: &Usage) -> Result<(), StoreError> {
        let (id, key) = (id.clone(), key.to_owned());
        let doc = serde_json::to_string(usage).map_err(backend)?;
        self.db
            .with(move |c| {
                c.run(
                    "INSERT OR REPLACE INTO usage (job_id, key, doc) VALUES (?1, ?2, ?3)",
                    params![id.as_str(), key, doc],
                )
                .map(|_| ())
                .map_err(backend)
            })
            .await
    }

    async fn usage(&self, id: &JobId) -> Result<Usage, StoreError> {
        let id = id.clone();
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT doc FROM usage WHERE job_id = ?1")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([id.as_str()], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                let mut total = Usage::default();
                for row in rows {
                    let part: Usage =
                        serde_json::from_str(&row.map_err(backend)?).map_err(backend)?;
                    total.add(&part);
                }
                Ok(total)
            })
            .await
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleState>, StoreError> {
        let name = name.to_owned();
        self.db
            .with(move |c| {
                let doc: Option<String> = c
                    .row(
                        "SELECT doc FROM schedules WHERE name = ?1",
                        [name.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                doc.map(|d| serde_json::from_str(&d).map_err(backend))
                    .transpose()
            })
            .await
    }

    async fn put_schedule(&self, state: &ScheduleState, expected: u64) -> Result<(), StoreError> {
        let mut next = state.clone();
        next.version = expected + 1;
        let doc = serde_json::to_string(&next).map_err(backend)?;
        let name = state.name.clone();
        self.db
            .with(move |c| {
                let n = if expected == 0 {
                    c.run(
                        "INSERT OR IGNORE INTO schedules (name, version, doc) VALUES (?1, 1, ?2)",
                        params![name, doc],
                    )
                } else {
                    c.run(
                        "UPDATE schedules SET version = ?2, doc = ?3 WHERE name = ?1 AND version = ?4",
                        params![name, (expected + 1) as i64, doc, expected as i64],
                    )
                }
                .map_err(backend)?;
                if n == 0 {
                    Err(StoreError::Conflict)
                } else {
                    Ok(())
                }
            })
            .await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleState>, StoreError> {
        self.db
            .with(move |c| {
                let mut stmt = c
                    .prepare_cached("SELECT doc FROM schedules ORDER BY name")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.map(|r| {
                    r.map_err(backend)
                        .and_then(|d| serde_json::from_str(&d).map_err(backend))
                })
                .collect()
            })
            .await
    }
}

/// Records chunk `index` done with `result` (JSON) unless it is done already.
fn complete_in(
    tx: &Connection,
    id: &JobId,
    index: u32,
    result: &str,
    now: DateTime<Utc>,
    group: Option<CountGroup>,
) -> Result<ChunkCompletion, StoreError> {
    let first = tx
        .run(
            "UPDATE chunks SET result = ?3 WHERE job_id = ?1 AND idx = ?2 AND result IS NULL",
            params![id.as_str(), index, result],
        )
        .map_err(backend)?
        == 1;
    if first {
        // Counted as DynamoDB counts (see `CountGroup`), so that the job's count means the
        // same on both stores.
        let counted = match group {
            None => 1,
            Some(g) => {
                let reached = reserve_in(tx, id, &g.counter(), 1)?;
                if reached < u64::from(g.size) {
                    return Ok(ChunkCompletion {
                        first,
                        counted: false,
                        done: 0,
                        total: 0,
                        state: JobState::Running,
                    });
                }
                g.size
            }
        };
        tx.run(
            "UPDATE jobs SET chunks_done = chunks_done + ?3, updated_at = ?2 WHERE id = ?1",
            params![id.as_str(), ms(now), counted],
        )
        .map_err(backend)?;
    } else {
        // Done already, or no such chunk.
        tx.row(
            "SELECT 1 FROM chunks WHERE job_id = ?1 AND idx = ?2",
            params![id.as_str(), index],
            |_| Ok(()),
        )
        .optional()
        .map_err(backend)?
        .ok_or(StoreError::NotFound)?;
    }
    let (doc, done): (String, i64) = tx
        .row(
            "SELECT doc, chunks_done FROM jobs WHERE id = ?1",
            [id.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?
        .ok_or(StoreError::NotFound)?;
    let job = read_job(doc, done)?;
    Ok(ChunkCompletion {
        first,
        counted: true,
        done: job.chunks_done,
        total: job.chunks_total,
        state: job.state,
    })
}

/// Takes `n` numbers of a job's counter; the first of them.
fn reserve_in(tx: &Connection, id: &JobId, counter: &str, n: u32) -> Result<u64, StoreError> {
    tx.run(
        "INSERT OR IGNORE INTO counters (job_id, name, next) VALUES (?1, ?2, 1)",
        params![id.as_str(), counter],
    )
    .map_err(backend)?;
    // An UPDATE and a SELECT rather than `UPDATE ... RETURNING`: SQLite gives a RETURNING
    // statement a statement journal, whose memory, freed at once, made glibc hand pages back
    // to the kernel (and shoot down TLBs) on every call.
    tx.run(
        "UPDATE counters SET next = next + ?3 WHERE job_id = ?1 AND name = ?2",
        params![id.as_str(), counter, i64::from(n)],
    )
    .map_err(backend)?;
    let next: i64 = tx
        .row(
            "SELECT next FROM counters WHERE job_id = ?1 AND name = ?2",
            params![id.as_str(), counter],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let first = next - i64::from(n);
    u64::try_from(first).map_err(backend)
}

/// Records a chunk's published names (JSON) unless some are recorded; the names that stand.
fn set_published_in(
    tx: &Connection,
    id: &JobId,
    index: u32,
    body: &str,
) -> Result<Vec<OutputFile>, StoreError> {
    tx.run(
        "UPDATE chunks SET published = ?3 WHERE job_id = ?1 AND idx = ?2 AND published IS NULL",
        params![id.as_str(), index, body],
    )
    .map_err(backend)?;
    let standing: Option<Option<String>> = tx
        .row(
            "SELECT published FROM chunks WHERE job_id = ?1 AND idx = ?2",
            params![id.as_str(), index],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    let standing = standing.flatten().ok_or(StoreError::NotFound)?;
    serde_json::from_str(&standing).map_err(backend)
}

type ChunkRow = (String, Option<String>, Option<String>, i64);

fn chunk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChunkRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn chunk_record((spec, result, published, renamed): &ChunkRow) -> Result<ChunkRecord, StoreError> {
    Ok(ChunkRecord {
        spec: serde_json::from_str(spec).map_err(backend)?,
        result: result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(backend)?,
        published: published
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(backend)?,
        renamed: *renamed != 0,
    })
}

/// One named queue in [`SqliteDb`], optionally redriving to a dead-letter queue.
#[derive(Clone)]
pub struct SqliteQueue {
    db: SqliteDb,
    name: String,
    visibility: Duration,
    redrive: Option<(String, u32)>,
    notify: Arc<Notify>,
}

impl SqliteQueue {
    pub fn new(db: SqliteDb, name: &str, visibility: Duration) -> Self {
        SqliteQueue {
            db,
            name: name.to_owned(),
            visibility,
            redrive: None,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Moves a message to `dead_letter` when it would be received more than `max_receives`
    /// times, as an SQS redrive policy does.
    pub fn with_dead_letter(mut self, dead_letter: &SqliteQueue, max_receives: u32) -> Self {
        self.redrive = Some((dead_letter.name.clone(), max_receives.max(1)));
        self
    }

    /// Makes every message received and not yet deleted visible again at once, as if its
    /// visibility timeout had run out. Only for a queue no live process is working from: the
    /// one-process server calls it at start, when every lease it finds belongs to the
    /// process that died before it, and its chunks would otherwise wait out the timeout.
    pub async fn release_leases(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        let released = self
            .db
            .with(move |c| {
                let now = now_ms();
                c.run(
                    "UPDATE messages SET visible_at = ?2, receipt = NULL
                     WHERE queue = ?1 AND receipt IS NOT NULL AND visible_at > ?2",
                    params![name.as_str(), now],
                )
                .map(|n| n as u64)
                .map_err(qerr)
            })
            .await?;
        if released > 0 {
            self.notify.notify_waiters();
        }
        Ok(released)
    }

    /// Messages in the queue, visible or not (for tests and diagnostics).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        let name = self.name.clone();
        self.db
            .with(move |c| {
                c.row(
                    "SELECT count(*) FROM messages WHERE queue = ?1",
                    [name.as_str()],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n as u64)
                .map_err(|e| QueueError::Backend(e.into()))
            })
            .await
    }
}

fn qerr(e: rusqlite::Error) -> QueueError {
    QueueError::Backend(e.into())
}

/// Takes up to `max` visible messages, one group at a time in turn, the group served
/// longest ago first; each taken message is hidden for `visibility` ms and its group's turn
/// recorded. Groups found empty are forgotten.
fn take_by_turns(
    tx: &Connection,
    queue: &str,
    now: i64,
    visibility: i64,
    max: usize,
) -> Result<Vec<Delivery>, QueueError> {
    let groups: Vec<String> = {
        let mut stmt = tx.prepare_cached(GROUPS_BY_TURN).map_err(qerr)?;
        stmt.query_map([queue], |r| r.get(0))
            .map_err(qerr)?
            .collect::<Result<_, _>>()
            .map_err(qerr)?
    };
    let mut turn: i64 = tx
        .row(
            "SELECT coalesce(max(served), 0) FROM queue_groups WHERE queue = ?1",
            [queue],
            |r| r.get(0),
        )
        .map_err(qerr)?;
    let mut live: Vec<&String> = groups.iter().collect();
    let mut out = Vec::new();
    while out.len() < max && !live.is_empty() {
        let mut still = Vec::with_capacity(live.len());
        for group in live {
            if out.len() >= max {
                still.push(group);
                continue;
            }
            let row: Option<(i64, String, i64)> = tx
                .prepare_cached(RECEIVE_FROM_GROUP)
                .and_then(|mut s| {
                    s.query_row(params![queue, group, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .optional()
                })
                .map_err(qerr)?;
            let Some((id, body, count)) = row else {
                tx.run(DROP_EMPTY_GROUP, params![queue, group])
                    .map_err(qerr)?;
                continue;
            };
            let receipt = uuid::Uuid::new_v4().simple().to_string();
            tx.run(
                "UPDATE messages SET receive_count = receive_count + 1, visible_at = ?2, receipt = ?3 WHERE id = ?1",
                params![id, now.saturating_add(visibility), receipt],
            )
            .map_err(qerr)?;
            turn += 1;
            tx.run(
                "UPDATE queue_groups SET served = ?3 WHERE queue = ?1 AND grp = ?2",
                params![queue, group, turn],
            )
            .map_err(qerr)?;
            out.push(Delivery {
                message_id: id.to_string(),
                receipt,
                body,
                receive_count: u32::try_from(count + 1).unwrap_or(u32::MAX),
            });
            still.push(group);
        }
        live = still;
    }
    Ok(out)
}

#[async_trait]
impl WorkQueue for SqliteQueue {
    async fn send(&self, group: &str, bodies: Vec<String>) -> Result<(), QueueError> {
        if bodies.is_empty() {
            return Ok(());
        }
        let name = self.name.clone();
        let group = group.to_owned();
        self.db
            .with(move |c| {
                let tx = Tx::begin(c, false).map_err(qerr)?;
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "INSERT INTO messages (queue, body, visible_at, grp) VALUES (?1, ?2, ?3, ?4)",
                        )
                        .map_err(qerr)?;
                    let now = now_ms();
                    for b in &bodies {
                        stmt.execute(params![name.as_str(), b, now, group.as_str()])
                            .map_err(qerr)?;
                    }
                }
                // A new group has never been served: it takes the next turn.
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO queue_groups (queue, grp, served) VALUES (?1, ?2, 0)",
                )
                .and_then(|mut s| s.execute(params![name.as_str(), group.as_str()]))
                .map_err(qerr)?;
                tx.commit().map_err(qerr)
            })
            .await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let name = self.name.clone();
            let redrive = self.redrive.clone();
            let visibility = i64::try_from(self.visibility.as_millis()).unwrap_or(i64::MAX);
            let got = self
                .db
                .with(move |c| {
                    let tx = Tx::begin(c, true).map_err(qerr)?;
                    let now = now_ms();
                    if let Some((dead, max_receives)) = &redrive {
                        tx.run(
                            "INSERT OR IGNORE INTO queue_groups (queue, grp, served)
                             SELECT DISTINCT ?1, grp, 0 FROM messages
                             WHERE queue = ?2 AND visible_at <= ?3 AND receive_count >= ?4",
                            params![dead, name.as_str(), now, max_receives],
                        )
                        .map_err(qerr)?;
                        tx.run(
                            "UPDATE messages SET queue = ?1, receive_count = 0, receipt = NULL
                             WHERE queue = ?2 AND visible_at <= ?3 AND receive_count >= ?4",
                            params![dead, name.as_str(), now, max_receives],
                        )
                        .map_err(qerr)?;
                    }
                    let out = take_by_turns(&tx, &name, now, visibility, max)?;
                    tx.commit().map_err(qerr)?;
                    Ok::<_, QueueError>(out)
                })
                .await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Woken by a send in this process, or polling for messages that become visible
            // again and for senders in other processes.
            let nap = (deadline - now).min(Duration::from_millis(200));
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.db
            .with(move |c| {
                let tx = Tx::begin(c, true).map_err(qerr)?;
                let Some((queue, group)) = tx
                    .row(
                        "SELECT queue, grp FROM messages WHERE receipt = ?1",
                        [receipt.as_str()],
                        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    )
                    .optional()
                    .map_err(qerr)?
                else {
                    return Err(QueueError::InvalidReceipt);
                };
                tx.run(
                    "DELETE FROM messages WHERE receipt = ?1",
                    [receipt.as_str()],
                )
                .map_err(qerr)?;
                tx.run(DROP_EMPTY_GROUP, params![queue, group])
                    .map_err(qerr)?;
                tx.commit().map_err(qerr)
            })
            .await
    }

    async fn extend(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let until =
            now_ms().saturating_add(i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX));
        self.db
            .with(move |c| {
                let n = c
                    .run(
                        "UPDATE messages SET visible_at = ?2 WHERE receipt = ?1",
                        params![receipt.as_str(), until],
                    )
                    .map_err(qerr)?;
                if n == 1 {
                    Ok(())
                } else {
                    Err(QueueError::InvalidReceipt)
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[tokio::test]
    async fn job_store_contract() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = SqliteDb::open(&dir.path().join("state.sqlite")).expect("db");
        testkit::job_store::run(Arc::new(SqliteJobStore::new(db))).await;
    }

    #[tokio::test]
    async fn queue_contract() {
        let db = SqliteDb::in_memory().expect("db");
        let dead = SqliteQueue::new(db.clone(), "dead", testkit::queue::VISIBILITY);
        let work = SqliteQueue::new(db, "work", testkit::queue::VISIBILITY)
            .with_dead_letter(&dead, testkit::queue::MAX_RECEIVES);
        testkit::queue::run(Arc::new(work), Arc::new(dead)).await;
    }

    #[tokio::test]
    async fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state.sqlite");
        let job = testkit::sample_job(JobState::Accepted, Utc::now());
        {
            let db = SqliteDb::open(&path).expect("db");
            SqliteJobStore::new(db.clone())
                .create(&job)
                .await
                .expect("create");
            SqliteQueue::new(db, "work", Duration::from_secs(5))
                .send("g", vec!["m".into()])
                .await
                .expect("send");
        }
        let db = SqliteDb::open(&path).expect("reopen");
        assert!(
            SqliteJobStore::new(db.clone())
                .get(&job.id)
                .await
                .expect("get")
                .is_some()
        );
        let got = SqliteQueue::new(db, "work", Duration::from_secs(5))
            .receive(1, Duration::from_secs(1))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
    }

    #[tokio::test]
    async fn cached_statements_are_not_recompiled_when_rebound() {
        let db = SqliteDb::in_memory().expect("db");
        let queue = SqliteQueue::new(db.clone(), "work", Duration::from_secs(5));
        for _ in 0..3 {
            queue.send("g", vec!["m".into()]).await.expect("send");
            let got = queue
                .receive(1, Duration::from_millis(10))
                .await
                .expect("receive");
            assert_eq!(got.len(), 1);
        }
        let conn = db.conn.lock().expect("lock");
        let stmt = conn.prepare_cached(RECEIVE_FROM_GROUP).expect("cached");
        // The receive's SELECT binds a new time on every call; with plans that depend on
        // bound values, each call would have parsed it again.
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[tokio::test]
    async fn receives_take_turns_between_groups() {
        let db = SqliteDb::in_memory().expect("db");
        let queue = SqliteQueue::new(db, "work", Duration::from_secs(30));
        // A large export's backlog, one of its messages already taken, then a small
        // export's two messages.
        let big: Vec<String> = (0..50).map(|i| format!("big-{i}")).collect();
        queue.send("big", big).await.expect("send");
        let first = queue
            .receive(1, Duration::from_millis(10))
            .await
            .expect("receive");
        assert_eq!(first[0].body, "big-0");
        queue
            .send("small", vec!["small-0".into(), "small-1".into()])
            .await
            .expect("send");
        let mut order = Vec::new();
        for _ in 0..5 {
            let got = queue
                .receive(1, Duration::from_millis(10))
                .await
                .expect("receive");
            order.push(got[0].body.clone());
        }
        // The small export's messages are not behind the forty-nine others: the groups
        // alternate, starting with the one served longest ago.
        assert_eq!(order, ["small-0", "big-1", "small-1", "big-2", "big-3"]);
        // Several at once also take turns.
        queue
            .send("third", vec!["third-0".into()])
            .await
            .expect("send");
        let bodies: Vec<String> = queue
            .receive(3, Duration::from_millis(10))
            .await
            .expect("receive")
            .into_iter()
            .map(|d| d.body)
            .collect();
        assert_eq!(bodies, ["third-0", "big-4", "big-5"]);
    }

    #[tokio::test]
    async fn released_leases_are_delivered_again_at_once() {
        let db = SqliteDb::in_memory().expect("db");
        let queue = SqliteQueue::new(db, "work", Duration::from_secs(300));
        queue.send("g", vec!["m".into()]).await.expect("send");
        let first = queue
            .receive(1, Duration::from_millis(10))
            .await
            .expect("receive");
        assert_eq!(first.len(), 1);
        assert!(
            queue
                .receive(1, Duration::from_millis(10))
                .await
                .expect("receive")
                .is_empty(),
            "leased"
        );
        assert_eq!(queue.release_leases().await.expect("release"), 1);
        let again = queue
            .receive(1, Duration::from_millis(10))
            .await
            .expect("receive");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].receive_count, 2);
        assert!(matches!(
            queue.delete(&first[0].receipt).await,
            Err(QueueError::InvalidReceipt)
        ));
        queue.delete(&again[0].receipt).await.expect("delete");
        assert_eq!(queue.depth().await.expect("depth"), 0);
    }

    #[tokio::test]
    async fn a_database_made_before_message_groups_is_migrated() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE messages (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, body TEXT NOT NULL,
                    visible_at INTEGER NOT NULL, receive_count INTEGER NOT NULL DEFAULT 0,
                    receipt TEXT);
                 INSERT INTO messages (queue, body, visible_at) VALUES ('work', 'old', 0);",
            )
            .expect("old schema");
        }
        let db = SqliteDb::open(&path).expect("migrated");
        let queue = SqliteQueue::new(db, "work", Duration::from_secs(30));
        let got = queue
            .receive(1, Duration::from_millis(10))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body, "old");
    }
}
