//! The simulated world's network: addressed, tagged messages between madsim nodes, with a
//! random latency per message and clogged nodes and links.
//!
//! Why not madsim's `Endpoint`: it costs every message three timers (a random delay of 0 to
//! 5 µs when sending and again when receiving, then the link's latency), a wake-up for each,
//! and an address formatted as a string for its virtual-server lookup. Messages are most of
//! what a seed simulates, so that was the largest single cost of a run. Here a message costs
//! one timer: the sender puts it in the receiver's mailbox with the virtual time it becomes
//! visible, and arms one timer that wakes the receiver then.
//!
//! Latency: madsim's sleeps last at least 1 ms, so its two random delays made every message
//! take 3 to 5 ms where the world configured 1 to 3. Here a message takes the configured
//! latency, with one exception: a message that a receiver finds before it is visible, having
//! not waited for its tag when it was sent (a paused node, a busy loop), gets its timer then,
//! and madsim's minimum may deliver it up to 1 ms late.
//!
//! What is kept from madsim's network, because the faults rely on it:
//! - a clogged node or link drops what is sent over it (checked when sending, as madsim does);
//! - a killed node's mailbox dies with its tasks, so messages in flight to it are lost, and its
//!   next incarnation binds a fresh mailbox at the same address;
//! - a paused node's messages wait in its mailbox until it runs again.

use crate::world::lock::lock;
use madsim::rand::Rng;
use madsim::task::NodeId;
use madsim::time::{sleep_until, Instant};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::future::{poll_fn, Future};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A message's content: any value, moved, never serialized.
pub type Payload = Box<dyn Any + Send + Sync>;

/// The network of one simulated world. Clones share it.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Mutex<Links>>,
    /// The next answer tag, shared by every socket: a late answer to a killed incarnation's
    /// call then matches no call of the next incarnation at the same address, as an answer
    /// on a closed connection reaches no new one.
    next_tag: Arc<AtomicU64>,
}

struct Links {
    latency: Range<Duration>,
    sockets: HashMap<SocketAddr, Weak<Socket>>,
    /// Sockets made before their node bound them ([`Network::reserve`]).
    reserved: HashMap<SocketAddr, Arc<Socket>>,
    clogged_nodes: HashSet<NodeId>,
    clogged_links: HashSet<(NodeId, NodeId)>,
    /// Client sockets get addresses of their own, in 10.255.0.0/16, one port each.
    clients_bound: u32,
}

impl Network {
    /// A network whose messages take `min..=max` (uniform) to arrive. Panics below 1 ms:
    /// madsim's timers wake no sooner, so a shorter latency would not be kept.
    pub fn new(min: Duration, max: Duration) -> Network {
        assert!(
            min >= Duration::from_millis(1),
            "a latency below madsim's 1 ms minimum sleep: {min:?}"
        );
        Network {
            inner: Arc::new(Mutex::new(Links {
                latency: min..max.max(min + Duration::from_micros(1)),
                sockets: HashMap::new(),
                reserved: HashMap::new(),
                clogged_nodes: HashSet::new(),
                clogged_links: HashSet::new(),
                clients_bound: 0,
            })),
            next_tag: Arc::new(AtomicU64::new(FIRST_ANSWER_TAG)),
        }
    }

    /// Binds `address` on the current node. A socket still bound there belongs to a killed
    /// incarnation of this node: the new one takes the address over. The node's first bind
    /// of a reserved address takes the reserved socket, with what was sent to it meanwhile.
    pub fn bind(&self, address: SocketAddr) -> Endpoint {
        let node = madsim::plugin::node();
        // Taken out before a mismatched reservation is dropped: its drop takes the lock.
        let reserved = lock(&self.inner).reserved.remove(&address);
        if let Some(socket) = reserved.filter(|socket| socket.node == node) {
            return Endpoint { socket };
        }
        let socket = self.socket(node, address);
        lock(&self.inner)
            .sockets
            .insert(address, Arc::downgrade(&socket));
        Endpoint { socket }
    }

    /// Reserves `address` for `node` before the node runs: messages sent there wait for the
    /// node's first bind, as connections wait in a listening socket's backlog. The world
    /// reserves every service's address when it creates the nodes, so that a service that
    /// starts first does not lose its first messages to one that has not bound yet (madsim
    /// starts nodes in random order). Only a node's first bind takes its reservation; the
    /// world kills no node before that.
    pub fn reserve(&self, node: NodeId, address: SocketAddr) {
        let socket = self.socket(node, address);
        let replaced = {
            let mut links = lock(&self.inner);
            links.sockets.insert(address, Arc::downgrade(&socket));
            links.reserved.insert(address, socket)
        };
        drop(replaced); // outside the lock: a socket's drop takes it
    }

    fn socket(&self, node: NodeId, address: SocketAddr) -> Arc<Socket> {
        Arc::new(Socket {
            address,
            node,
            network: Arc::downgrade(&self.inner),
            mailbox: Mutex::new(Mailbox::default()),
            next_tag: self.next_tag.clone(),
        })
    }

    /// Binds a fresh address on the current node, for a client.
    pub fn bind_client(&self) -> Endpoint {
        let index = {
            let mut links = lock(&self.inner);
            links.clients_bound += 1;
            links.clients_bound - 1
        };
        // Ports 1 to 65,535 on each host (port 0 is no port).
        let [_, _, high, low] = (index / PORTS).to_be_bytes();
        let port = u16::try_from(1 + index % PORTS).unwrap_or(u16::MAX);
        let host = Ipv4Addr::new(10, 255, high, low);
        self.bind(SocketAddr::V4(SocketAddrV4::new(host, port)))
    }

    /// Clogs (or unclogs) everything `node` sends and receives.
    pub fn clog_node(&self, node: NodeId, on: bool) {
        let clogged = &mut lock(&self.inner).clogged_nodes;
        match on {
            true => clogged.insert(node),
            false => clogged.remove(&node),
        };
    }

    /// Clogs (or unclogs) what `source` sends to `target`.
    pub fn clog_link(&self, source: NodeId, target: NodeId, on: bool) {
        let clogged = &mut lock(&self.inner).clogged_links;
        match on {
            true => clogged.insert((source, target)),
            false => clogged.remove(&(source, target)),
        };
    }
}

/// The ports of one client host.
const PORTS: u32 = u16::MAX as u32;

/// The tag requests travel on: they wait in the receiver's mailbox until it asks for them.
pub const REQUEST_TAG: u64 = 1;

/// The first answer tag ([`Endpoint::fresh_tag`]; 0 means "no answer"). Only a waiting call
/// takes an answer: one that arrives after its call gave up is dropped, as an answer on a
/// closed connection would be, rather than kept in the mailbox for ever.
const FIRST_ANSWER_TAG: u64 = 2;

/// One bound address: its mailbox, and where its messages come from.
struct Socket {
    address: SocketAddr,
    node: NodeId,
    network: Weak<Mutex<Links>>,
    mailbox: Mutex<Mailbox>,
    next_tag: Arc<AtomicU64>,
}

impl Drop for Socket {
    /// Unbinds the address unless a later incarnation took it over.
    fn drop(&mut self) {
        let Some(network) = self.network.upgrade() else {
            return;
        };
        let mut links = lock(&network);
        let ours = links
            .sockets
            .get(&self.address)
            .is_some_and(|bound| std::ptr::eq(bound.as_ptr(), self));
        if ours {
            links.sockets.remove(&self.address);
        }
    }
}

#[derive(Default)]
struct Mailbox {
    /// In arrival order; each becomes visible at its own time.
    messages: Vec<Message>,
    /// The tasks waiting for a tag.
    waiting: Vec<(u64, Waker)>,
}

struct Message {
    visible_at: Instant,
    /// Whether a timer wakes the receiver when the message becomes visible.
    announced: bool,
    tag: u64,
    from: SocketAddr,
    payload: Payload,
}

impl Mailbox {
    /// The index of the message of `tag` that becomes visible first (the earliest sent
    /// among equals).
    fn first(&self, tag: u64) -> Option<usize> {
        let mut first: Option<(usize, Instant)> = None;
        for (index, message) in self.messages.iter().enumerate() {
            if message.tag == tag && first.is_none_or(|(_, at)| message.visible_at < at) {
                first = Some((index, message.visible_at));
            }
        }
        first.map(|(index, _)| index)
    }

    fn wait(&mut self, tag: u64, waker: &Waker) {
        match self.waiting.iter_mut().find(|(waiting, _)| *waiting == tag) {
            Some((_, known)) if known.will_wake(waker) => {}
            Some((_, known)) => known.clone_from(waker),
            None => self.waiting.push((tag, waker.clone())),
        }
    }

    fn stop_waiting(&mut self, tag: u64) {
        self.waiting.retain(|(waiting, _)| *waiting != tag);
    }
}

/// A bound address. Clones share the socket; it is unbound when the last clone is dropped
/// (a killed node's tasks are dropped, and with them its sockets).
#[derive(Clone)]
pub struct Endpoint {
    socket: Arc<Socket>,
}

impl Endpoint {
    /// The address this endpoint is bound to (what its messages come from).
    pub fn address(&self) -> SocketAddr {
        self.socket.address
    }

    /// A tag no other call waits on, in this incarnation of the node or any other.
    pub fn fresh_tag(&self) -> u64 {
        self.socket.next_tag.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `payload` to `target` on `tag`. It is dropped if nothing is bound there, the way
    /// is clogged, or it is an answer nobody waits for; otherwise it arrives after the
    /// network's latency.
    pub fn send(&self, target: SocketAddr, tag: u64, payload: Payload) {
        let Some(network) = self.socket.network.upgrade() else {
            return;
        };
        let (receiver, latency) = {
            let links = lock(&network);
            let Some(receiver) = links.sockets.get(&target).and_then(Weak::upgrade) else {
                return;
            };
            let (source, target) = (self.socket.node, receiver.node);
            if links.clogged_nodes.contains(&source)
                || links.clogged_nodes.contains(&target)
                || links.clogged_links.contains(&(source, target))
            {
                return;
            }
            let latency = madsim::rand::thread_rng().gen_range(links.latency.clone());
            (receiver, latency)
        };
        let visible_at = Instant::now() + latency;
        let mut mailbox = lock(&receiver.mailbox);
        let waiting = mailbox.waiting.iter().find(|(waiting, _)| *waiting == tag);
        match waiting {
            Some((_, waker)) => wake_at(visible_at, waker),
            None if tag >= FIRST_ANSWER_TAG => return,
            None => {}
        }
        let announced = waiting.is_some();
        mailbox.messages.push(Message {
            visible_at,
            announced,
            tag,
            from: self.socket.address,
            payload,
        });
    }

    /// Waits for the next message on `tag`: its payload and the address it came from.
    pub async fn recv(&self, tag: u64) -> (Payload, SocketAddr) {
        let mut waiting = WaitGuard {
            socket: &self.socket,
            tag,
        };
        poll_fn(|cx| waiting.poll_message(cx)).await
    }
}

/// Wakes `waker` at `at`: one timer on madsim's heap (a timer is never removed before it
/// fires, so this is the only one a message costs).
fn wake_at(at: Instant, waker: &Waker) {
    let mut timer = pin!(sleep_until(at));
    let mut context = Context::from_waker(waker);
    if timer.as_mut().poll(&mut context).is_ready() {
        waker.wake_by_ref();
    }
}

/// A receive in progress; it stops waiting for its tag when dropped (a call that timed out).
struct WaitGuard<'a> {
    socket: &'a Socket,
    tag: u64,
}

impl WaitGuard<'_> {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<(Payload, SocketAddr)> {
        let mut mailbox = lock(&self.socket.mailbox);
        let first = mailbox.first(self.tag);
        if let Some(index) = first {
            let message = &mut mailbox.messages[index];
            if message.visible_at <= Instant::now() {
                let message = mailbox.messages.remove(index);
                return Poll::Ready((message.payload, message.from));
            }
            if !message.announced {
                // Sent while nobody waited for its tag: no timer wakes anyone for it yet.
                message.announced = true;
                wake_at(message.visible_at, cx.waker());
            }
        }
        mailbox.wait(self.tag, cx.waker());
        Poll::Pending
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        lock(&self.socket.mailbox).stop_waiting(self.tag);
    }
}
