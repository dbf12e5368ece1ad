//! A TCP proxy in front of Redis that the driver controls: forward, cut (drop every
//! connection and refuse new ones) or freeze (accept, hold, forward nothing, so calls time
//! out). Leaving a fault drops the connections it held.
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Cut,
    Freeze,
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(target_port: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, watcher) = watch::channel(Mode::Forward);
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
                    Mode::Freeze => {
                        // Accepted, never answered; dropped when the freeze ends.
                        tokio::spawn(async move {
                            let _held = inbound;
                            let _ = watcher.changed().await;
                        });
                    }
                    Mode::Forward => {
                        tokio::spawn(forward(inbound, target_port, watcher));
                    }
                }
            }
        });
        Ok(Proxy { port, mode, task })
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
}

async fn forward(mut inbound: TcpStream, target_port: u16, mut watcher: watch::Receiver<Mode>) {
    let Ok(Ok(mut outbound)) = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", target_port)),
    )
    .await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let changed = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => None,
        result = watcher.changed() => result.ok().map(|_| *watcher.borrow_and_update()),
    };
    if changed == Some(Mode::Freeze) {
        // Hold both ends without moving a byte until the freeze ends.
        let _ = watcher.changed().await;
    }
}
