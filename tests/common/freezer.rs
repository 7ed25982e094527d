//! A relay between a store and PostgreSQL that freezes its clients just before they commit:
//! what SIGSTOP does to a member between its transaction's last statement and its `COMMIT`.
//! The relay keeps both sockets open, so the server sees a live session idle in its
//! transaction, holding every lock the transaction took.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

/// A listening relay; see the module comment.
pub struct Freezer {
    /// The relay's own address, as `host=… port=…` for a libpq key-value string.
    pub address: String,
    armed: Arc<AtomicBool>,
    frozen: Arc<Notify>,
    thawed: watch::Sender<bool>,
}

impl Freezer {
    /// A relay to the PostgreSQL at `host:port`, passing everything until [`Freezer::arm`].
    pub async fn start(upstream: String) -> Freezer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(Notify::new());
        let (thawed, thaw) = watch::channel(false);
        let relay = Relay {
            upstream,
            armed: armed.clone(),
            frozen: frozen.clone(),
            thaw,
        };
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay.clone().serve(client));
            }
        });
        Freezer {
            address: format!("host=127.0.0.1 port={port}"),
            armed,
            frozen,
            thawed,
        }
    }

    /// From now on, the next `COMMIT` a client sends is held back until [`Freezer::thaw`].
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until a client is frozen before its `COMMIT`.
    pub async fn frozen(&self) {
        self.frozen.notified().await;
    }

    /// Sends the held `COMMIT` on, and lets every client through from then on.
    pub fn thaw(&self) {
        self.thawed.send_replace(true);
    }
}

#[derive(Clone)]
struct Relay {
    upstream: String,
    armed: Arc<AtomicBool>,
    frozen: Arc<Notify>,
    thaw: watch::Receiver<bool>,
}

impl Relay {
    async fn serve(mut self, client: TcpStream) {
        let Ok(server) = TcpStream::connect(&self.upstream).await else {
            return;
        };
        let (mut from_client, mut to_client) = client.into_split();
        let (mut from_server, mut to_server) = server.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        });
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let Ok(read) = from_client.read(&mut buffer).await else {
                return;
            };
            if read == 0 {
                return;
            }
            let chunk = &buffer[..read];
            // tokio-postgres commits with the simple query `COMMIT`; no statement of the
            // store contains that word.
            let commit = chunk.windows(6).any(|window| window == b"COMMIT");
            if commit && self.armed.swap(false, Ordering::SeqCst) {
                self.frozen.notify_one();
                let _ = self.thaw.wait_for(|thawed| *thawed).await;
            }
            if to_server.write_all(chunk).await.is_err() {
                return;
            }
        }
    }
}
