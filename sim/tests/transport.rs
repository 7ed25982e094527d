//! Tests of the simulated network (`holdfast_sim::world::transport`): what the faults rely
//! on. Each test would pass on a network that delivered everything at once, so each also
//! checks the case that must not deliver.
#![cfg(madsim)]

mod common;

use common::simulate;
use holdfast_sim::world::transport::{Endpoint, Network, Payload, REQUEST_TAG};
use madsim::runtime::{Handle, NodeHandle};
use madsim::time::{sleep, Instant};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Requests wait in the mailbox for their receiver; answers do not (see the last test).
const TAG: u64 = REQUEST_TAG;

fn address(text: &str) -> SocketAddr {
    text.parse().expect("a test address")
}

fn node(name: &str, ip: &str) -> NodeHandle {
    Handle::current()
        .create_node()
        .name(name)
        .ip(ip.parse().expect("a test ip"))
        .build()
}

/// Binds `at` on `node` (a socket belongs to the node that binds it).
async fn bind_on(node: &NodeHandle, network: &Network, at: SocketAddr) -> Endpoint {
    let network = network.clone();
    node.spawn(async move { network.bind(at) }).await.unwrap()
}

fn number(payload: Payload) -> u32 {
    *payload.downcast::<u32>().expect("a u32 payload")
}

/// What `endpoint` receives on `tag` within `limit`, in order.
async fn received_within(endpoint: &Endpoint, tag: u64, limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    let mut numbers = Vec::new();
    while let Some((payload, _)) =
        holdfast_sim::world::rpc::within(deadline, endpoint.recv(tag)).await
    {
        numbers.push(number(payload));
    }
    numbers
}

/// Two nodes, each with a socket, on a network of 1 to 3 ms.
async fn pair() -> (Network, (NodeHandle, Endpoint), (NodeHandle, Endpoint)) {
    let network = Network::new(Duration::from_millis(1), Duration::from_millis(3));
    let (one, other) = (node("one", "10.0.0.1"), node("other", "10.0.0.2"));
    let first = bind_on(&one, &network, address("10.0.0.1:1")).await;
    let second = bind_on(&other, &network, address("10.0.0.2:1")).await;
    (network, (one, first), (other, second))
}

/// Goal: a message arrives after the network's latency, never before, never after, from the
/// sender's address; one sent on another tag is not received on this one.
#[test]
fn a_message_arrives_within_the_latency_from_its_sender() {
    simulate(1, async {
        let (_network, (_, sender), (_, receiver)) = pair().await;
        for number in 0..50u32 {
            let sent_at = Instant::now();
            sender.send(receiver.address(), TAG, Box::new(number));
            sender.send(receiver.address(), 0, Box::new(u32::MAX));
            let (payload, from) = receiver.recv(TAG).await;
            let took = Instant::now() - sent_at;
            assert_eq!(self::number(payload), number);
            assert_eq!(from, sender.address());
            assert!(
                (Duration::from_millis(1)..=Duration::from_millis(3)).contains(&took),
                "message {number} took {took:?}"
            );
        }
        let other_tag = received_within(&receiver, 0, Duration::from_millis(10)).await;
        assert_eq!(other_tag.len(), 50);
        assert!(received_within(&receiver, TAG, Duration::from_millis(10))
            .await
            .is_empty());
    });
}

/// Goal: a waiting receiver gets messages in the order they become visible, each at its own
/// time (the latency reorders them), none lost.
#[test]
fn messages_are_received_in_the_order_they_become_visible() {
    simulate(2, async {
        let (_network, (_, sender), (other, receiver)) = pair().await;
        let receiving = other.spawn(async move {
            let mut arrivals = Vec::new();
            for _ in 0..20 {
                let (payload, _) = receiver.recv(TAG).await;
                arrivals.push((Instant::now(), number(payload)));
            }
            arrivals
        });
        sleep(Duration::from_millis(1)).await; // the receiver waits
        let sent_at = Instant::now();
        for number in 0..20u32 {
            sender.send(address("10.0.0.2:1"), TAG, Box::new(number));
        }
        let arrivals = receiving.await.unwrap();
        assert!(arrivals.windows(2).all(|pair| pair[0].0 <= pair[1].0));
        assert!(arrivals.iter().all(|(at, _)| {
            (Duration::from_millis(1)..=Duration::from_millis(3)).contains(&(*at - sent_at))
        }));
        let distinct: std::collections::BTreeSet<_> = arrivals.iter().map(|(at, _)| *at).collect();
        assert!(distinct.len() > 5, "each message has its own latency");
        let mut numbers: Vec<u32> = arrivals.iter().map(|(_, n)| *n).collect();
        assert_ne!(numbers, (0..20).collect::<Vec<_>>(), "latency reorders");
        numbers.sort_unstable();
        assert_eq!(numbers, (0..20).collect::<Vec<_>>(), "nothing lost");
    });
}

/// Goal: a clogged link drops what is sent over it, one way only; a clogged node drops both
/// ways; unclogging delivers again.
#[test]
fn clogs_drop_what_is_sent_while_they_last() {
    simulate(3, async {
        let (network, (one, first), (other, second)) = pair().await;
        let limit = Duration::from_millis(10);
        network.clog_link(one.id(), other.id(), true);
        first.send(second.address(), TAG, Box::new(1u32));
        second.send(first.address(), TAG, Box::new(2u32));
        assert!(received_within(&second, TAG, limit).await.is_empty());
        assert_eq!(received_within(&first, TAG, limit).await, [2]);
        network.clog_link(one.id(), other.id(), false);
        network.clog_node(other.id(), true);
        first.send(second.address(), TAG, Box::new(3u32));
        second.send(first.address(), TAG, Box::new(4u32));
        assert!(received_within(&second, TAG, limit).await.is_empty());
        assert!(received_within(&first, TAG, limit).await.is_empty());
        network.clog_node(other.id(), false);
        first.send(second.address(), TAG, Box::new(5u32));
        assert_eq!(received_within(&second, TAG, limit).await, [5]);
    });
}

/// A service node that records every number it receives, with the incarnation that got it.
fn recording_service(
    network: &Network,
    at: SocketAddr,
    heard: &Arc<Mutex<Vec<(u32, u32)>>>,
) -> NodeHandle {
    let (network, heard) = (network.clone(), heard.clone());
    let incarnations = Arc::new(Mutex::new(0u32));
    Handle::current()
        .create_node()
        .name("service")
        .ip(at.ip())
        .init(move || {
            let (network, heard, incarnations) =
                (network.clone(), heard.clone(), incarnations.clone());
            async move {
                let incarnation = {
                    let mut count = incarnations.lock().unwrap();
                    *count += 1;
                    *count
                };
                let endpoint = network.bind(at);
                loop {
                    let (payload, _) = endpoint.recv(TAG).await;
                    heard.lock().unwrap().push((incarnation, number(payload)));
                }
            }
        })
        .build()
}

/// Goal: a message in flight to a node that is killed is lost, even if the node is back at
/// the same address before the message would have arrived; its next incarnation hears only
/// what was sent to it. A paused node hears what arrived meanwhile once it runs again.
#[test]
fn a_killed_node_loses_what_was_in_flight_and_a_paused_one_keeps_it() {
    simulate(4, async {
        let network = Network::new(Duration::from_millis(1), Duration::from_millis(3));
        let at = address("10.0.0.9:1");
        let heard = Arc::new(Mutex::new(Vec::new()));
        let service = recording_service(&network, at, &heard);
        let client = node("client", "10.0.0.1");
        let sender = bind_on(&client, &network, address("10.0.0.1:1")).await;
        sleep(Duration::from_millis(1)).await;
        sender.send(at, TAG, Box::new(1u32));
        sleep(Duration::from_millis(5)).await;
        sender.send(at, TAG, Box::new(2u32)); // in flight when the node dies
        Handle::current().kill(service.id());
        Handle::current().restart(service.id());
        sleep(Duration::from_millis(5)).await;
        sender.send(at, TAG, Box::new(3u32));
        sleep(Duration::from_millis(5)).await;
        Handle::current().pause(service.id());
        sender.send(at, TAG, Box::new(4u32));
        sleep(Duration::from_millis(50)).await;
        assert_eq!(*heard.lock().unwrap(), [(1, 1), (2, 3)]);
        Handle::current().resume(service.id());
        sleep(Duration::from_millis(1)).await;
        assert_eq!(*heard.lock().unwrap(), [(1, 1), (2, 3), (2, 4)]);
    });
}

/// Goal: answer tags are never reused, not even by the next incarnation of a node at the same
/// address, so a late answer to a dead incarnation's call cannot pass for an answer to a new
/// call.
#[test]
fn answer_tags_are_never_reused_across_incarnations() {
    simulate(5, async {
        let network = Network::new(Duration::from_millis(1), Duration::from_millis(3));
        let client = node("client", "10.0.0.1");
        let at = address("10.0.0.1:1");
        let old = bind_on(&client, &network, at).await;
        let old_tags = [old.fresh_tag(), old.fresh_tag()];
        drop(old);
        let new = bind_on(&client, &network, at).await;
        let other = bind_on(&client, &network, address("10.0.0.1:2")).await;
        let new_tags = [new.fresh_tag(), other.fresh_tag()];
        assert!(old_tags
            .iter()
            .all(|tag| !new_tags.contains(tag) && *tag > 1));
        assert_ne!(new_tags[0], new_tags[1]);
    });
}

/// Goal: an answer is taken only by a call waiting for it: one that arrives after its call
/// gave up is dropped, not kept for a later wait on that tag.
#[test]
fn an_answer_nobody_waits_for_is_dropped() {
    simulate(6, async {
        let (_network, (_, server), (other, client)) = pair().await;
        let to = client.address();
        let waited = client.fresh_tag();
        let waiting = other.spawn({
            let client = client.clone();
            async move { received_within(&client, waited, Duration::from_millis(10)).await }
        });
        sleep(Duration::from_millis(1)).await;
        server.send(to, waited, Box::new(1u32));
        assert_eq!(waiting.await.unwrap(), [1]);
        let abandoned = client.fresh_tag();
        assert!(
            received_within(&client, abandoned, Duration::from_millis(2))
                .await
                .is_empty()
        );
        server.send(to, abandoned, Box::new(2u32));
        sleep(Duration::from_millis(5)).await;
        assert!(
            received_within(&client, abandoned, Duration::from_millis(5))
                .await
                .is_empty()
        );
    });
}

/// Goal: what is sent to a reserved address before its node binds waits for the node's first
/// bind (the world reserves every service's address when it creates the nodes, which madsim
/// starts in random order); what is sent to an address nobody reserved or bound is lost.
#[test]
fn a_reserved_address_keeps_what_arrives_before_its_node_binds() {
    simulate(7, async {
        let network = Network::new(Duration::from_millis(1), Duration::from_millis(3));
        let (client, service) = (node("client", "10.0.0.1"), node("service", "10.0.0.9"));
        let sender = bind_on(&client, &network, address("10.0.0.1:1")).await;
        let (reserved, unbound) = (address("10.0.0.9:1"), address("10.0.0.9:2"));
        network.reserve(service.id(), reserved);
        sender.send(reserved, TAG, Box::new(1u32));
        sender.send(unbound, TAG, Box::new(2u32));
        sleep(Duration::from_millis(5)).await;
        let first = bind_on(&service, &network, reserved).await;
        let late = bind_on(&service, &network, unbound).await;
        let limit = Duration::from_millis(5);
        assert_eq!(received_within(&first, TAG, limit).await, [1]);
        assert!(received_within(&late, TAG, limit).await.is_empty());
    });
}

/// Goal: every client socket gets an address of its own, past the 65,535 ports of one host.
#[test]
fn client_addresses_are_never_reused() {
    simulate(8, async {
        let network = Network::new(Duration::from_millis(1), Duration::from_millis(3));
        let client = node("client", "10.0.0.1");
        let addresses = client
            .spawn(async move {
                (0..70_000)
                    .map(|_| network.bind_client().address())
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap();
        let distinct: std::collections::BTreeSet<_> = addresses.iter().collect();
        assert_eq!(distinct.len(), addresses.len());
        assert!(addresses.iter().all(|address| address.port() != 0));
    });
}
