//! Request/response over the simulated network ([`crate::world::transport`]), without
//! serialization.
//!
//! Payloads travel as `Box<dyn Any>`; a request carries the tag its answer must be sent on. A
//! call that gets no answer within its timeout (dead node, clogged link, slow service) returns
//! `None`, which every client maps to `PortError::Unavailable`.

use crate::world::transport::{Endpoint, REQUEST_TAG};
use madsim::time::{sleep_until, Instant};
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::Duration;

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
    let reply_tag = endpoint.fresh_tag();
    assert!(
        reply_tag > REQUEST_TAG,
        "an answer's tag must not be a request's"
    );
    endpoint.send(target, REQUEST_TAG, Box::new((reply_tag, request)));
    let deadline = Instant::now() + timeout;
    let (payload, from) = within(deadline, endpoint.recv(reply_tag)).await?;
    debug_assert_eq!(from, target, "answer from an unexpected address");
    payload.downcast::<A>().ok().map(|answer| *answer)
}

/// Waits for `future` until `deadline` (`None`: it did not finish by then).
///
/// Unlike `madsim::time::timeout`, whose timer is added to madsim's timer heap again each
/// time the future is polled, this adds one timer for the whole wait (another only if a
/// different task polls it). Timers are never removed before their deadline, and the heap
/// is among the simulator's largest costs: every call waits this way.
pub async fn within<F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(sleep_until(deadline));
    let mut armed: Option<Waker> = None;
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if armed
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return match timer.is_elapsed() {
                true => Poll::Ready(None),
                false => Poll::Pending,
            };
        }
        armed = Some(cx.waker().clone());
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Sends `request` without waiting for any answer (acks=0 produce).
pub fn send<Q>(endpoint: &Endpoint, target: SocketAddr, request: Q)
where
    Q: Send + Sync + 'static,
{
    // The "no answer" tag: nobody listens on it, so a reply (if any) is simply dropped.
    endpoint.send(target, REQUEST_TAG, Box::new((0u64, request)));
}

/// Serves requests of type `Q` on `endpoint` forever. A request answered at once (a
/// heartbeat, a cache or store call that finds no lock taken) is answered from this loop; one
/// that waits (an acks=all produce waiting for replication, a long poll) gets a task of its
/// own, so that it never blocks the others. Spawning a task for every request cost about a
/// twentieth of a large seed's time. Runs on the current node: killing the node kills the
/// server and every request in progress.
pub async fn serve<Q, A, H, F>(endpoint: Endpoint, handler: H)
where
    Q: Send + Sync + 'static,
    A: Send + Sync + 'static,
    H: Fn(Q) -> F + Send + Sync + 'static,
    F: Future<Output = Option<A>> + Send + 'static,
{
    loop {
        let (payload, from) = endpoint.recv(REQUEST_TAG).await;
        let Ok(envelope) = payload.downcast::<(u64, Q)>() else {
            continue; // a message for another service: ignore it, as a real server would
        };
        let (reply_tag, request) = *envelope;
        let mut answer = Box::pin(handler(request));
        // The first poll registers this loop's waker wherever the handler waits; a wake-up
        // through it later only polls this loop once more for nothing.
        match poll_fn(|cx| Poll::Ready(answer.as_mut().poll(cx))).await {
            Poll::Ready(answer) => reply(&endpoint, from, reply_tag, answer),
            Poll::Pending => {
                let endpoint = endpoint.clone();
                madsim::task::spawn(async move {
                    reply(&endpoint, from, reply_tag, answer.await);
                });
            }
        }
    }
}

/// Sends `answer` back on the caller's tag (none for a request sent without waiting).
fn reply<A: Send + Sync + 'static>(
    endpoint: &Endpoint,
    to: SocketAddr,
    reply_tag: u64,
    answer: Option<A>,
) {
    let Some(answer) = answer else { return };
    if reply_tag != 0 {
        endpoint.send(to, reply_tag, Box::new(answer));
    }
}
