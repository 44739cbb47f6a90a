//! Output: an execution's stdout and stderr as numbered chunks, in the order they were printed.
//!
//! One writer per execution chooses the sequence numbers, so appends are plain inserts that a
//! retry may repeat harmlessly (`ON CONFLICT DO NOTHING`); `logs` and remote clients page
//! through them by sequence number. What is kept is bounded by the writer, not here.

use crate::{Result, Store, now_ms, q};

/// One stored piece of output.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OutputChunk {
    pub seq: i64,
    pub stream: String,
    pub data: Vec<u8>,
}

/// Totals of an execution's output, recorded when it ends.
#[derive(Clone, Debug, Default)]
pub struct OutputSummary {
    pub bytes: i64,
    pub dropped: i64,
    pub sha256: Option<String>,
    /// What the command was given on stdin (size, sha256), when anything was forwarded.
    pub stdin: Option<(i64, String)>,
}

impl Store {
    /// Appends output chunks (seq numbers chosen by the one writer of an execution).
    pub async fn append_output(&self, id: &str, chunks: &[(i64, &str, &[u8])]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let at = now_ms();
        let begin = self.begin_write();
        with_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await.map_err(q("begin output write"))?;
            for (seq, stream, data) in chunks {
                sqlx::query(
                    "INSERT INTO output (execution_id, seq, stream, data, at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (execution_id, seq) DO NOTHING",
                )
                .bind(id)
                .bind(seq)
                .bind(stream)
                .bind(*data)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(q("write output"))?;
            }
            tx.commit().await.map_err(q("commit output"))?;
        });
        Ok(())
    }

    /// Output chunks after `after_seq`, in order, at most `limit`.
    pub async fn read_output(
        &self,
        id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<OutputChunk>> {
        with_pool!(self, pool => sqlx::query_as::<_, OutputChunk>(
            "SELECT seq, stream, data FROM output WHERE execution_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(q("read output")))
    }

    /// Deletes output of executions that ended before `before_ms` (retention).
    pub async fn prune_output(&self, before_ms: i64) -> Result<u64> {
        with_pool!(self, pool => Ok(sqlx::query(
            "DELETE FROM output WHERE execution_id IN \
             (SELECT id FROM executions WHERE finished_at IS NOT NULL AND finished_at < $1)",
        )
        .bind(before_ms)
        .execute(pool)
        .await
        .map_err(q("prune output"))?
        .rows_affected()))
    }
}
