//! An async follow stream (feature `async`, on tokio).
//!
//! ```no_run
//! # async fn run() -> Result<(), cj_client::Error> {
//! use cj_client::r#async::FollowStream;
//! use cj_client::{FollowLine, FollowOptions};
//! let mut stream = FollowStream::start(&cj_client::socket_path(), FollowOptions::consumer("indexer")).await?;
//! while let Some(line) = stream.next_line().await {
//!     if let FollowLine::Change { change, cursor, .. } = line? {
//!         // index change.path, then from time to time:
//!         // cj_client::Client::connect_default()?.consumer_ack("indexer", &cursor)?;
//!         let _ = (change, cursor);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! [`FollowStream`] also implements [`futures_core::Stream`], so the
//! combinators of `futures` or `tokio-stream` work on it. It reconnects as
//! the blocking [`crate::Follow`] does.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cj_types::follow::FollowLine;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::client::{Error, RESPONSE_LINE_BYTES_MAX};
use crate::follow::FollowOptions;
use crate::follow::{decode_line, is_final, RECONNECT_WAIT_MAX, RECONNECT_WAIT_MIN};

struct Inner {
    socket: PathBuf,
    options: FollowOptions,
    reader: Option<BufReader<UnixStream>>,
    cursor: Option<String>,
    done: bool,
}

type Step = Pin<Box<dyn Future<Output = (Inner, Option<Result<FollowLine, Error>>)> + Send>>;

/// A follow stream for async code.
pub struct FollowStream {
    inner: Option<Inner>,
    pending: Option<Step>,
}

impl FollowStream {
    /// Connects and sends the request.
    pub async fn start(socket: &Path, options: FollowOptions) -> Result<FollowStream, Error> {
        let mut inner = Inner {
            socket: socket.to_path_buf(),
            options,
            reader: None,
            cursor: None,
            done: false,
        };
        inner.connect().await?;
        Ok(FollowStream {
            inner: Some(inner),
            pending: None,
        })
    }

    /// The next line (`None` once the stream has ended with an error).
    pub async fn next_line(&mut self) -> Option<Result<FollowLine, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next_line(cx)).await
    }

    /// The cursor of the last line returned.
    pub fn cursor(&self) -> Option<&str> {
        self.inner.as_ref().and_then(|i| i.cursor.as_deref())
    }

    fn poll_next_line(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<FollowLine, Error>>> {
        if self.pending.is_none() {
            let Some(mut inner) = self.inner.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(async move {
                let item = inner.next().await;
                (inner, item)
            }));
        }
        let Some(step) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match step.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((inner, item)) => {
                self.pending = None;
                self.inner = Some(inner);
                Poll::Ready(item)
            }
        }
    }
}

impl futures_core::Stream for FollowStream {
    type Item = Result<FollowLine, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_line(cx)
    }
}

impl Inner {
    async fn connect(&mut self) -> Result<(), Error> {
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                    socket: self.socket.clone(),
                    detail: e.to_string(),
                },
                _ => Error::NotRunning {
                    socket: self.socket.clone(),
                    source: e,
                },
            })?;
        let req = self.options.request(self.cursor.as_deref());
        let mut line =
            serde_json::to_vec(&Value::Object(req)).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        self.reader = Some(BufReader::new(stream));
        Ok(())
    }

    async fn step(&mut self) -> Result<Option<FollowLine>, Error> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| Error::Protocol("not connected".into()))?;
        let mut buf = Vec::new();
        reader
            .take(RESPONSE_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        decode_line(&buf, &mut self.cursor)
    }

    async fn resume(&mut self, why: Error) -> Result<(), Error> {
        if is_final(&why) || !self.options.reconnect {
            return Err(why);
        }
        self.reader = None;
        let mut wait: Duration = RECONNECT_WAIT_MIN;
        loop {
            tokio::time::sleep(wait).await;
            match self.connect().await {
                Ok(()) => return Ok(()),
                Err(e @ Error::PermissionDenied { .. }) => return Err(e),
                Err(_) => wait = (wait * 2).min(RECONNECT_WAIT_MAX),
            }
        }
    }

    async fn next(&mut self) -> Option<Result<FollowLine, Error>> {
        while !self.done {
            match self.step().await {
                Ok(Some(line)) => return Some(Ok(line)),
                Ok(None) => {}
                Err(e) => {
                    if let Err(e) = self.resume(e).await {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
        }
        None
    }
}
