//! A TCP proxy that a test can take down and bring back, to play an outage of PostgreSQL or
//! Redis without stopping the shared server that other tests use: while it is down every open
//! connection is cut and new ones are refused (its port is closed), as when the server restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy from a local port to `target`.
pub struct OutageProxy {
    addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl OutageProxy {
    /// Starts forwarding a fresh local port to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let target = tokio::net::lookup_host(target)
            .await
            .expect("the target resolves")
            .next()
            .expect("the target has an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let task = tokio::spawn(serve(listener, addr, target, up.clone()));
        Self { addr, up, task }
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones until [`OutageProxy::restore`].
    pub async fn cut(&self) {
        self.up.send_replace(false);
        // Let the accept loop close the port and the pipes drop their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    first: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    up: Arc<watch::Sender<bool>>,
) {
    let mut state = up.subscribe();
    let mut listener = first;
    loop {
        let went_down = tokio::select! {
            accepted = listener.accept() => {
                if let Ok((inbound, _)) = accepted {
                    tokio::spawn(pipe(inbound, target, up.subscribe()));
                }
                false
            }
            changed = state.wait_for(|up| !*up) => {
                if changed.is_err() {
                    return;
                }
                true
            }
        };
        if !went_down {
            continue;
        }
        // Down: close the port, wait to come up, then take the same port again.
        drop(listener);
        if state.wait_for(|up| *up).await.is_err() {
            return;
        }
        let mut tries = 0;
        listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the proxy cannot take its port back: {e}"),
            }
        };
    }
}

async fn pipe(mut inbound: TcpStream, target: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        // Cut: both sockets close as the pipe ends, as when the server goes away.
        _ = up.wait_for(|up| !*up) => {}
    }
}
