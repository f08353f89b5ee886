//! The gateway's edge against hostile clients: a cap on open connections, an idle timeout, and
//! a deadline for each request to arrive (slowloris), enforced on the socket itself; and the
//! client's address, taken from a trusted proxy's header only when one is configured.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::http::HeaderMap;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::GatewayArgs;

/// A listener that holds at most `max_connections` open; the next waits for one to close.
pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    request: Duration,
}

impl GuardedListener {
    pub fn new(inner: TcpListener, args: &GatewayArgs) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(args.max_connections.max(1))),
            idle: args.idle_timeout,
            request: args.request_read_timeout,
        }
    }
}

impl Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    let _ = io.set_nodelay(true);
                    return (GuardedStream::new(io, permit, self.idle, self.request), addr);
                }
                // As axum's own listener: transient errors (too many open files) pass.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The TCP peer of a connection (use [`client_ip`] for the client's address).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, GuardedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A connection that fails once nothing moved for `idle`, or once a request has been arriving
/// for `request` without the server answering (a client dribbling headers or a body).
pub struct GuardedStream {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    request: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// Armed by the first byte read after the last write.
    request_timer: Option<Pin<Box<Sleep>>>,
}

impl GuardedStream {
    fn new(io: TcpStream, slot: OwnedSemaphorePermit, idle: Duration, request: Duration) -> Self {
        Self {
            io,
            _slot: slot,
            idle,
            request,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            request_timer: Some(Box::pin(tokio::time::sleep(request))),
        }
    }

    /// Pending timers register the waker; an expired one is the connection's end.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.idle_timer.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long"));
        }
        if let Some(t) = self.request_timer.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            return Some(io::Error::new(io::ErrorKind::TimedOut, "request took too long to arrive"));
        }
        None
    }

    fn moved(&mut self) {
        self.idle_timer.as_mut().reset(Instant::now() + self.idle);
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                    if self.request_timer.is_none() {
                        let deadline = self.request;
                        self.request_timer = Some(Box::pin(tokio::time::sleep(deadline)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                    // The server is answering: the request arrived in time.
                    self.request_timer = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                if self.idle_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The client's address: from `trusted_header` (the last entry, the one the trusted proxy
/// added) when configured, else the TCP peer. A header nobody configured is never believed.
pub fn client_ip(headers: &HeaderMap, peer: Option<SocketAddr>, trusted_header: Option<&str>) -> Option<IpAddr> {
    if let Some(name) = trusted_header {
        let last = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).last();
        if let Some(ip) = last.and_then(|v| v.trim().parse::<IpAddr>().ok()) {
            return Some(ip);
        }
    }
    peer.map(|p| p.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_header_counts_only_when_trusted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.0.0.9".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(client_ip(&headers, Some(peer), None), Some(peer.ip()));
        assert_eq!(client_ip(&headers, Some(peer), Some("x-forwarded-for")), Some("10.0.0.9".parse().unwrap()));
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&headers, Some(peer), Some("x-forwarded-for")), Some(peer.ip()));
    }
}
