//! The local server's HTTP/1 listener: the axum router served by hyper, with what
//! `axum::serve` leaves out.
//!
//! - A header-read timeout: a connection that does not finish a request's headers in time
//!   (a slow or idle client, a slow-loris attack) is closed, which frees its slot.
//! - A cap on open connections: past it, new connections wait in the listen backlog until
//!   one closes, so that file descriptors and memory stay bounded.
//! - An `OperationOutcome` for what hyper refuses before any handler runs (a URI over 64 KiB:
//!   414; headers past its buffer: 431; a request line it cannot parse, such as raw non-ASCII
//!   bytes in the URI: 400). Hyper answers those itself, with an empty body and no way to
//!   change it; [`OutcomeIo`] rewrites that answer on its way to the socket. The router
//!   answers every other error with an `OperationOutcome`, so a bodiless 4xx or 5xx on the
//!   wire is always one of hyper's own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds of the listener (`FHIR_EXPORT_HEADER_READ_TIMEOUT_SECS`,
/// `FHIR_EXPORT_MAX_CONNECTIONS`).
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait for some to be freed.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(OutcomeIo::new(stream)), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                // A client gone, a timeout, a refused request: the connection's own business.
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Rewrites hyper's own bodiless error answers into `OperationOutcome` answers, and passes
/// everything else through unchanged.
pub struct OutcomeIo<T> {
    inner: T,
    /// Bytes of a rewritten answer not yet written, from `.1` on.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> OutcomeIo<T> {
    pub fn new(inner: T) -> Self {
        OutcomeIo {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> OutcomeIo<T> {
    /// Writes out what is pending of a rewritten answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = self.pending.as_mut() {
            if *at >= bytes.len() {
                self.pending = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OutcomeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for OutcomeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        if let Some(answer) = rewrite(buf) {
            self.pending = Some((answer, 0));
            return match self.drain(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // Taken: the rest goes out with the next write, flush or shutdown.
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }

    // One buffer per write: a response head always starts a buffer, where `rewrite` looks.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// The `OperationOutcome` answer for one of hyper's own error answers (a head with an error
/// status and an empty body), or `None` for anything else.
fn rewrite(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let status = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let end = memchr::memmem::find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let empty = head.contains("\r\ncontent-length: 0") && !head.contains("\r\ncontent-type:");
    if !empty || end + 4 != buf.len() {
        return None;
    }
    let (code, reason, text) = match status {
        414 => (
            "too-long",
            "URI Too Long",
            "the request's URI is longer than this server reads (64 KiB); send the parameters in a POST body (a Parameters resource)",
        ),
        431 => (
            "too-long",
            "Request Header Fields Too Large",
            "the request's line and headers are larger than this server reads; send the parameters in a POST body (a Parameters resource)",
        ),
        505 => (
            "not-supported",
            "HTTP Version Not Supported",
            "this server speaks HTTP/1.1",
        ),
        s if s < 500 => (
            "structure",
            "Bad Request",
            "the request could not be read: its request line or a header is malformed (a URI must be ASCII, other bytes percent-encoded)",
        ),
        _ => ("exception", "Internal Server Error", "the request failed"),
    };
    let body = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": text }]
    })
    .to_string();
    tracing::info!(status, reason = text, "request refused before routing");
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodiless_error_heads_are_rewritten() {
        let hyper_414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(hyper_414).expect("rewritten")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).expect("body");
        let oo: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(oo["resourceType"], "OperationOutcome");
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        // Ours, with a body, and successes are left alone.
        assert!(rewrite(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/fhir+json\r\ncontent-length: 120\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore").is_none());
        assert!(rewrite(b"{\"resourceType\":\"Patient\"}\n").is_none());
    }
}
