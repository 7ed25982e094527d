//! Request/response over madsim's simulated network, without serialization.
//!
//! Payloads travel as `Box<dyn Any>`; a request carries the tag its answer must be sent on. A
//! call that gets no answer within its timeout (dead node, clogged link, slow service) returns
//! `None`, which every client maps to `PortError::Unavailable`.

use madsim::net::Endpoint;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// The tag every service listens on for requests; answers use a fresh random tag per call.
const REQUEST_TAG: u64 = 1;

/// Sends `request` to `target` and waits at most `timeout` for the answer.
pub async fn call<Q, A>(
    endpoint: &Endpoint,
    target: SocketAddr,
    request: Q,
    timeout: Duration,
) -> Option<A>
where
    Q: Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    let reply_tag: u64 = madsim::rand::random::<u64>() | 2; // never the request tag
    debug_assert_ne!(reply_tag, REQUEST_TAG);
    endpoint
        .send_to_raw(target, REQUEST_TAG, Box::new((reply_tag, request)))
        .await
        .ok()?;
    let (payload, from) = madsim::time::timeout(timeout, endpoint.recv_from_raw(reply_tag))
        .await
        .ok()?
        .ok()?;
    debug_assert_eq!(from, target, "answer from an unexpected address");
    payload.downcast::<A>().ok().map(|answer| *answer)
}

/// Sends `request` without waiting for any answer (acks=0 produce).
pub async fn send<Q>(endpoint: &Endpoint, target: SocketAddr, request: Q)
where
    Q: Send + Sync + 'static,
{
    // The "no answer" tag: nobody listens on it, so a reply (if any) is simply dropped.
    let _ = endpoint
        .send_to_raw(target, REQUEST_TAG, Box::new((0u64, request)))
        .await;
}

/// Serves requests of type `Q` on `endpoint` forever, one task per request, so that a slow
/// request (an acks=all produce waiting for replication) never blocks the others. Runs on
/// the current node: killing the node kills the server and every request in progress.
pub async fn serve<Q, A, H, F>(endpoint: Endpoint, handler: H)
where
    Q: Send + Sync + 'static,
    A: Send + Sync + 'static,
    H: Fn(Q) -> F + Send + Sync + 'static,
    F: Future<Output = Option<A>> + Send + 'static,
{
    loop {
        let Ok((payload, from)) = endpoint.recv_from_raw(REQUEST_TAG).await else {
            return;
        };
        let Ok(envelope) = payload.downcast::<(u64, Q)>() else {
            continue; // a message for another service: ignore it, as a real server would
        };
        let (reply_tag, request) = *envelope;
        let answer = handler(request);
        let endpoint = endpoint.clone();
        madsim::task::spawn(async move {
            if let Some(answer) = answer.await {
                if reply_tag != 0 {
                    let _ = endpoint
                        .send_to_raw(from, reply_tag, Box::new(answer))
                        .await;
                }
            }
        });
    }
}
