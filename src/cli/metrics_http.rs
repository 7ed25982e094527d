//! A tiny Prometheus endpoint: every HTTP request on the listener gets
//! [`Metrics::render_prometheus`]. No routing, no keep-alive: scrapers need nothing more.

use holdfast::pipeline::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_real::io::{AsyncReadExt, AsyncWriteExt};
use tokio_real::net::{TcpListener, TcpStream};

/// How long a client may take to send its request before it is answered anyway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Request bytes read (and discarded): enough for a scraper's GET.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

/// Binds `address` and serves `metrics` until the runtime stops.
pub async fn serve(address: &str, metrics: Arc<Metrics>) -> Result<(), String> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen for metrics on {address}: {error}"))?;
    tracing::info!(address, "metrics endpoint up");
    tokio_real::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio_real::spawn(answer(stream, Arc::clone(&metrics)));
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics accept failed");
                    tokio_real::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn answer(mut stream: TcpStream, metrics: Arc<Metrics>) {
    // Read until the end of the request head (or a bound), so the client is not reset.
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let read_head = async {
        while request.len() < REQUEST_BYTES_MAX && !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(count) => request.extend_from_slice(&buffer[..count]),
            }
        }
    };
    let _ = tokio_real::time::timeout(REQUEST_TIMEOUT, read_head).await;
    let body = metrics.render_prometheus();
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(error) = stream.write_all(response.as_bytes()).await {
        tracing::debug!(%error, "metrics response not sent");
    }
    let _ = stream.shutdown().await;
}
