//! A TCP proxy that can cut its connections: the network loss a resuming client survives.
//!
//! Each accepted connection is forwarded to `upstream` byte for byte. [`CutProxy::cut_all`]
//! aborts every open connection at once with a TCP reset to both sides (SO_LINGER 0), as a
//! phone changing cell or a Wi-Fi drop looks to either end: no close frame, no FIN.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy on 127.0.0.1 (OS-picked port); stops when dropped.
pub struct CutProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Bumped by `cut_all`; each pump watches it.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// A proxy on 127.0.0.1:0 forwarding to `upstream`, running on the current tokio runtime.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cuts, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let accepted = accepted.clone();
            let cuts = cuts.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Relaxed);
                    let cut = cuts.subscribe();
                    tokio::spawn(pump(client, upstream, cut));
                }
            }
        });
        CutProxy {
            addr,
            accepted,
            cuts,
            task,
        }
    }

    /// Aborts every open connection now (RST to both sides, no close frame); new ones
    /// still work.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Relaxed)
    }

    /// `ws://PROXY/v1/stream?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/v1/stream?{}", self.addr, query)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

/// Copies both ways until either side ends or a cut comes; a cut resets both sockets.
async fn pump(client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<u64>) {
    cut.mark_unchanged();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client, mut server) = (client, server);
    let copied = {
        let both = tokio::io::copy_bidirectional(&mut client, &mut server);
        tokio::select! {
            r = both => Some(r),
            _ = cut.changed() => None,
        }
    };
    if copied.is_none() {
        reset(client);
        reset(server);
    }
}

/// Closes with a reset: linger 0 makes the kernel send RST and drop unsent data.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
