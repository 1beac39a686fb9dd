//! Read-your-writes: the consistency token a submission's answer carries,
//! and the wait of a results query until the projection has passed it.
//!
//! A token names where the event landed in the log (partition and offset).
//! Clients treat it as opaque; it is base64url so that it travels in a URL
//! as it is. The projection has passed a token when its stored position for
//! that partition (the offset of the next event to apply) is beyond the
//! token's offset.
//!
//! Passing is not enough to say the answer holds the event: the projection
//! also moves past events it dead-letters (invalid under its rules, refused
//! by MySQL, an idempotency key reused for another submission). So once the
//! projection has passed a token, [`is_rejected`] looks for an unresolved
//! `grade_dead_letter` at the token's place, and such a token reads
//! [`Freshness::Rejected`], never `current`. A dead letter retried and
//! applied is resolved, and its token reads `current` again.
//!
//! Many queries may wait at once; one task ([`PositionWatch`]) reads the
//! positions for all of them, and only while someone is waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::{MySqlConnection, MySqlPool};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::publisher::Receipt;

/// The version prefix inside a token, so its format can change later.
const TOKEN_VERSION: &str = "1";

/// Where an acknowledged event is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsistencyToken {
    pub partition: i32,
    pub offset: i64,
}

/// A token that this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consistency token is not one this server issued")]
pub struct InvalidToken;

impl ConsistencyToken {
    /// The opaque text form, as sent to clients.
    pub fn encode(&self) -> String {
        opaque(&format!(
            "{TOKEN_VERSION}:{}:{}",
            self.partition, self.offset
        ))
    }

    /// Reads a token sent back by a client.
    ///
    /// # Errors
    ///
    /// When `text` is not a token of this format.
    pub fn parse(text: &str) -> Result<Self, InvalidToken> {
        let plain = unopaque(text).ok_or(InvalidToken)?;
        let mut parts = plain.split(':');
        let (Some(TOKEN_VERSION), Some(partition), Some(offset), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidToken);
        };
        let partition: i32 = partition.parse().map_err(|_| InvalidToken)?;
        let offset: i64 = offset.parse().map_err(|_| InvalidToken)?;
        if partition < 0 || offset < 0 {
            return Err(InvalidToken);
        }
        Ok(Self { partition, offset })
    }
}

/// Text handed to clients to send back untouched (tokens, cursors):
/// base64url, so that it travels in a URL as it is.
pub(crate) fn opaque(plain: &str) -> String {
    URL_SAFE_NO_PAD.encode(plain)
}

/// The text [`opaque`] made, or `None` for anything else.
pub(crate) fn unopaque(text: &str) -> Option<String> {
    String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()
}

impl From<Receipt> for ConsistencyToken {
    fn from(receipt: Receipt) -> Self {
        Self {
            partition: receipt.partition,
            offset: receipt.offset,
        }
    }
}

/// Whether a query's answer includes everything up to its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// No token was given: the answer is whatever the projection holds.
    Unchecked,
    /// The projection had passed the token when the answer was read.
    Current,
    /// It had not within the wait: the answer may lack the event.
    Stale,
    /// The projection passed the token without applying its event: the
    /// event is a dead letter (see the module's documentation), and the
    /// answer lacks it for good unless an operator retries it.
    Rejected,
}

impl Freshness {
    /// The value of the `X-Consistency` header and the body's field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Current => "current",
            Self::Stale => "stale",
            Self::Rejected => "rejected",
        }
    }
}

/// How often positions are read while queries wait.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One reading of the projection's positions: the next offset to apply,
/// per partition, and when it was read.
#[derive(Clone, Debug)]
struct Reading {
    read_at: Instant,
    next_offsets: HashMap<i32, i64>,
}

impl Reading {
    fn has_passed(&self, token: ConsistencyToken) -> bool {
        self.next_offsets
            .get(&token.partition)
            .is_some_and(|next| *next > token.offset)
    }
}

/// Reads the `grade` projection's positions on behalf of every waiting query.
#[derive(Clone)]
pub struct PositionWatch {
    shared: Arc<Shared>,
}

/// What the clones of a watch share; the reading task ends with it.
struct Shared {
    readings: watch::Sender<Reading>,
    wake: Arc<Notify>,
    limit: Duration,
    task: tokio::task::AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PositionWatch {
    /// Starts the reading task for `topic` in the database behind `pool`;
    /// each wait lasts at most `limit`.
    pub fn start(pool: MySqlPool, topic: String, limit: Duration) -> Self {
        let (readings, _) = watch::channel(Reading {
            read_at: Instant::now(),
            next_offsets: HashMap::new(),
        });
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(read_while_waited_for(
            pool,
            topic,
            readings.clone(),
            wake.clone(),
        ))
        .abort_handle();
        Self {
            shared: Arc::new(Shared {
                readings,
                wake,
                limit,
                task,
            }),
        }
    }

    /// Waits, at most the configured limit, until a reading taken after this
    /// call shows the projection past `token`.
    pub async fn wait_for(&self, token: ConsistencyToken) -> Freshness {
        let asked_at = Instant::now();
        let mut readings = self.shared.readings.subscribe();
        self.shared.wake.notify_one();
        let passed =
            readings.wait_for(|reading| reading.read_at >= asked_at && reading.has_passed(token));
        match tokio::time::timeout(self.shared.limit, passed).await {
            Ok(Ok(_)) => Freshness::Current,
            _ => Freshness::Stale,
        }
    }
}

/// The task behind [`PositionWatch`]: reads positions every
/// [`POLL_INTERVAL`] while at least one query is subscribed, and sleeps
/// until woken otherwise. Aborted when the last clone of the watch is
/// dropped.
async fn read_while_waited_for(
    pool: MySqlPool,
    topic: String,
    readings: watch::Sender<Reading>,
    wake: Arc<Notify>,
) {
    loop {
        // Every waiting query holds a receiver. A query that subscribes
        // between this check and the wait leaves a permit in `wake`, so no
        // wake-up is lost.
        if readings.receiver_count() == 0 {
            wake.notified().await;
        }
        let started = Instant::now();
        match read_positions(&pool, &topic).await {
            Ok(next_offsets) => {
                readings.send_replace(Reading {
                    read_at: started,
                    next_offsets,
                });
            }
            Err(error) => {
                let error = score_shared::privacy::scrubbed(&error.to_string());
                tracing::warn!(error, "reading the projection's positions failed")
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether the event at `token` is an unresolved dead letter of the `grade`
/// projection. Asked only once the projection has passed the token, in the
/// snapshot the answer is read from.
///
/// # Errors
///
/// When MySQL does not answer.
pub async fn is_rejected(
    connection: &mut MySqlConnection,
    topic: &str,
    token: ConsistencyToken,
) -> sqlx::Result<bool> {
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM grade_dead_letter \
         WHERE topic = ? AND kafka_partition = ? AND kafka_offset = ? AND resolved_at IS NULL",
    )
    .bind(topic)
    .bind(token.partition)
    .bind(token.offset)
    .fetch_one(connection)
    .await?;
    Ok(open > 0)
}

async fn read_positions(pool: &MySqlPool, topic: &str) -> sqlx::Result<HashMap<i32, i64>> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT kafka_partition, next_offset FROM grade_position WHERE topic = ?")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_what_was_encoded() {
        let token = ConsistencyToken {
            partition: 2,
            offset: 123_456_789_012,
        };
        assert_eq!(ConsistencyToken::parse(&token.encode()), Ok(token));
    }

    #[test]
    fn a_token_is_safe_in_a_url_as_it_is() {
        let token = ConsistencyToken {
            partition: i32::MAX,
            offset: i64::MAX,
        }
        .encode();
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
    }

    #[test]
    fn text_that_is_not_a_token_is_refused() {
        for text in [
            "",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("2:3:4"),
            &URL_SAFE_NO_PAD.encode("1:3"),
            &URL_SAFE_NO_PAD.encode("1:3:4:5"),
            &URL_SAFE_NO_PAD.encode("1:-1:4"),
            &URL_SAFE_NO_PAD.encode("1:1:-4"),
            &URL_SAFE_NO_PAD.encode("1:x:4"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(ConsistencyToken::parse(text), Err(InvalidToken), "{text:?}");
        }
    }

    #[test]
    fn a_reading_has_passed_a_token_once_its_next_offset_is_beyond_it() {
        let reading = Reading {
            read_at: Instant::now(),
            next_offsets: HashMap::from([(0, 10)]),
        };
        let at = |offset| ConsistencyToken {
            partition: 0,
            offset,
        };
        assert!(reading.has_passed(at(9)));
        assert!(!reading.has_passed(at(10)), "offset 10 is not applied yet");
        assert!(
            !reading.has_passed(ConsistencyToken {
                partition: 1,
                offset: 0
            }),
            "a partition without a position has passed nothing"
        );
    }
}
