//! A TCP proxy in front of a server (Redis, in practice) that a test or the chaos driver
//! controls: forward, cut (drop every connection and refuse new ones), freeze (accept,
//! hold, forward nothing until the freeze ends, so calls time out) or black-hole (the same,
//! but the connections it holds stay silent for the proxy's whole life, even after a heal:
//! the half-dead network a client must notice by itself). Dropping the proxy drops
//! everything it holds.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    /// Closes every connection and refuses new ones.
    Cut,
    /// Holds every connection without forwarding a byte; leaving the freeze drops them.
    Freeze,
    /// Holds every connection without forwarding a byte, forever.
    BlackHole,
}

pub struct Proxy {
    /// Where clients connect.
    pub address: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    /// Bytes forwarded from clients to the target so far.
    sent: Arc<AtomicU64>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (mode, watcher) = watch::channel(Mode::Forward);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut watcher = watcher.clone();
                let current = *watcher.borrow_and_update();
                match current {
                    Mode::Cut => drop(inbound),
                    Mode::Freeze | Mode::BlackHole => {
                        tokio::spawn(async move {
                            let _held = inbound;
                            hold(current, watcher).await;
                        });
                    }
                    Mode::Forward => {
                        let inbound = Counted {
                            stream: inbound,
                            read: counter.clone(),
                        };
                        tokio::spawn(forward(inbound, target, watcher));
                    }
                }
            }
        });
        Ok(Proxy {
            address,
            mode,
            task,
            sent,
        })
    }

    /// Bytes clients sent through the proxy so far: for a PostgreSQL proxy, proof that a
    /// stretch of calls sent no statement when it does not move.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn set(&self, mode: Mode) {
        // Only a real change notifies: healing an already healthy proxy must not drop its
        // connections.
        self.mode.send_if_modified(|current| {
            let changed = *current != mode;
            *current = mode;
            changed
        });
    }

    /// Drops every connection and refuses new ones; returns once the forwarding tasks
    /// have seen the cut.
    pub async fn cut(&self) {
        self.set(Mode::Cut);
        settle().await;
    }

    /// Stops forwarding without closing anything; connections made before a heal stay
    /// silent forever.
    pub async fn black_hole(&self) {
        self.set(Mode::BlackHole);
        settle().await;
    }

    /// New connections are forwarded again.
    pub fn heal(&self) {
        self.set(Mode::Forward);
    }
}

/// Time for the forwarding tasks to see a fault before the caller acts on it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Holds a connection without moving a byte: until the freeze ends, or for the proxy's life.
async fn hold(mode: Mode, mut watcher: watch::Receiver<Mode>) {
    if mode == Mode::BlackHole {
        while watcher.changed().await.is_ok() {}
    } else {
        let _ = watcher.changed().await;
    }
}

/// A client connection counting the bytes read from it.
struct Counted {
    stream: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.read.fetch_add(read, Ordering::SeqCst);
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn forward(mut inbound: Counted, target: SocketAddr, mut watcher: watch::Receiver<Mode>) {
    let Ok(Ok(mut outbound)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.stream.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => None,
        result = watcher.changed() => result.ok().map(|_| *watcher.borrow_and_update()),
    };
    if let Some(mode @ (Mode::Freeze | Mode::BlackHole)) = changed {
        // Both ends held without moving a byte.
        hold(mode, watcher).await;
    }
}
