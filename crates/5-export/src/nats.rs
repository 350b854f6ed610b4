//! The NATS JetStream sink (`async-nats`): one message per record on one
//! subject, with `Nats-Msg-Id: <journal id>.<seq>` so that JetStream's
//! duplicate window drops a record published again; each batch is
//! published, then every publish acknowledgement awaited, in order.
//!
//! The stream is created if missing (file storage, limits retention, the
//! subject, a duplicate window of [`DUPLICATE_WINDOW`]); an existing one is
//! checked: it must hold the subject, store on file and keep a duplicate
//! window of at least [`DUPLICATE_WINDOW_MIN`].

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::{Message, Sink, SinkError};

/// The duplicate window of a stream the exporter creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The shortest duplicate window an existing stream may have.
pub const DUPLICATE_WINDOW_MIN: Duration = Duration::from_secs(120);
/// How long one publish acknowledgement may take.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct NatsSink {
    rt: tokio::runtime::Runtime,
    url: String,
    stream: String,
    subject: String,
    js: Option<jetstream::Context>,
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl NatsSink {
    /// A sink for `subject` in `stream` on the server at `url`; it
    /// connects on first use (and again after a failure).
    pub fn new(url: &str, stream: &str, subject: &str) -> Result<NatsSink, SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Refused(format!("cannot start the NATS client: {e}")))?;
        Ok(NatsSink {
            rt,
            url: url.to_string(),
            stream: stream.to_string(),
            subject: subject.to_string(),
            js: None,
        })
    }

    /// The JetStream context, connecting and checking the stream first.
    fn context(&mut self) -> Result<jetstream::Context, SinkError> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let (url, name, subject) = (self.url.clone(), self.stream.clone(), self.subject.clone());
        let js = self.rt.block_on(async move {
            let client = tokio::time::timeout(
                CONNECT_TIMEOUT,
                async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .connect(url.as_str()),
            )
            .await
            .map_err(|_| unavailable(format!("no answer from {url}")))?
            .map_err(unavailable)?;
            let js = jetstream::new(client);
            ensure_stream(&js, &name, &subject).await?;
            Ok::<_, SinkError>(js)
        })?;
        self.js = Some(js.clone());
        Ok(js)
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> Result<(), SinkError> {
    match js.get_stream(name).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(unavailable)?;
            let c = &info.config;
            let mut wrong = Vec::new();
            if !c.subjects.iter().any(|x| x == subject) {
                wrong.push(format!(
                    "its subjects {:?} do not include {subject}",
                    c.subjects
                ));
            }
            if c.storage != stream::StorageType::File {
                wrong.push("it is not stored on file (storage: file)".to_string());
            }
            if c.duplicate_window < DUPLICATE_WINDOW_MIN {
                wrong.push(format!(
                    "its duplicate window is {:?}, under {:?}",
                    c.duplicate_window, DUPLICATE_WINDOW_MIN
                ));
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(SinkError::Refused(format!(
                    "the existing stream {name} does not fit: {}; change it (nats stream edit) or name another",
                    wrong.join("; ")
                )))
            }
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            js.create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subject.to_string()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| SinkError::Refused(format!("cannot create the stream {name}: {e}")))
        }
        Err(e) => Err(unavailable(e)),
    }
}

impl Sink for NatsSink {
    fn publish(&mut self, batch: &[Message]) -> Result<(), SinkError> {
        let js = self.context()?;
        let subject = self.subject.clone();
        let result = self.rt.block_on(async move {
            let mut acks = Vec::with_capacity(batch.len());
            for m in batch {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
                let ack = js
                    .publish_with_headers(subject.clone(), headers, m.body.clone().into())
                    .await
                    .map_err(unavailable)?;
                acks.push(ack);
            }
            for ack in acks {
                tokio::time::timeout(ACK_TIMEOUT, ack)
                    .await
                    .map_err(|_| unavailable("no publish acknowledgement in time"))?
                    .map_err(unavailable)?;
            }
            Ok(())
        });
        if result.is_err() {
            // Connect again next time (the server may have restarted).
            self.js = None;
        }
        result
    }

    fn last_seq(&mut self, journal: &str) -> Result<Option<u64>, SinkError> {
        let js = self.context()?;
        let (name, subject) = (self.stream.clone(), self.subject.clone());
        let prefix = format!("{journal}.");
        let result = self.rt.block_on(async move {
            let s = js.get_stream(&name).await.map_err(unavailable)?;
            match s.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => Ok(m
                    .headers
                    .get(async_nats::header::NATS_MESSAGE_ID)
                    .and_then(|v| v.as_str().strip_prefix(&prefix).map(str::to_string))
                    .and_then(|s| s.parse().ok())),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(unavailable(e)),
            }
        });
        if result.is_err() {
            self.js = None;
        }
        result
    }
}
