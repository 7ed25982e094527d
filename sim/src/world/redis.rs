//! The Redis model: a key space with TTLs in virtual time, optional max-keys eviction
//! (`allkeys-random`), volatile by default (a restart loses every key) or persistent.
//! `SimCache` implements `holdfast::ports::DedupCache`.

use crate::world::lock::lock;
use crate::world::rpc;
use crate::world::transport::{Endpoint, Network};
use holdfast::idempotency::DeliveryKey;
use holdfast::ports::{DedupCache, PortError};
use madsim::rand::Rng;
use madsim::time::Instant;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Redis node's address.
pub fn redis_address() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)), 6379)
}

const SERVICE: &str = "redis";

/// A request to Redis.
#[derive(Clone, Debug)]
pub enum RedisRequest {
    Exists(Vec<Vec<u8>>),
    SetWithTtl(Vec<Vec<u8>>, Duration),
    FlushAll,
}

/// Redis's answer.
#[derive(Clone, Debug)]
pub enum RedisAnswer {
    Exists(Vec<bool>),
    Ok,
}

/// The key space. It outlives the node only if `persistent` (AOF with fsync always).
#[derive(Debug)]
pub struct RedisState {
    keys: BTreeMap<Vec<u8>, Instant>,
    persistent: bool,
    keys_max: Option<usize>,
    /// Keys evicted for room, for the report.
    pub evicted: u64,
}

impl RedisState {
    /// An empty Redis.
    pub fn new(persistent: bool, keys_max: Option<usize>) -> RedisState {
        RedisState {
            keys: BTreeMap::new(),
            persistent,
            keys_max,
            evicted: 0,
        }
    }

    /// A crash or restart: without persistence every key is gone.
    pub fn crash(&mut self) {
        if !self.persistent {
            self.keys.clear();
        }
    }

    /// Drops every key (`FLUSHALL`).
    pub fn flush_all(&mut self) {
        self.keys.clear();
    }

    /// How many keys are stored (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn exists(&mut self, key: &[u8], now: Instant) -> bool {
        match self.keys.get(key) {
            Some(expires) if *expires > now => true,
            Some(_) => {
                self.keys.remove(key); // lazy expiry, as Redis does on access
                false
            }
            None => false,
        }
    }

    fn set(&mut self, key: Vec<u8>, ttl: Duration, now: Instant) {
        if let Some(keys_max) = self.keys_max {
            if !self.keys.contains_key(&key) && self.keys.len() >= keys_max {
                self.keys.retain(|_, expires| *expires > now);
                while self.keys.len() >= keys_max.max(1) {
                    let victim_index = madsim::rand::thread_rng().gen_range(0..self.keys.len());
                    let victim = self.keys.keys().nth(victim_index).cloned();
                    if let Some(victim) = victim {
                        self.keys.remove(&victim);
                        self.evicted += 1;
                    }
                }
            }
        }
        self.keys.insert(key, now + ttl);
        debug_assert!(self
            .keys_max
            .is_none_or(|max| self.keys.len() <= max.max(1)));
    }

    fn handle(&mut self, request: RedisRequest, now: Instant) -> RedisAnswer {
        match request {
            RedisRequest::Exists(keys) => {
                RedisAnswer::Exists(keys.iter().map(|key| self.exists(key, now)).collect())
            }
            RedisRequest::SetWithTtl(keys, ttl) => {
                for key in keys {
                    self.set(key, ttl, now);
                }
                RedisAnswer::Ok
            }
            RedisRequest::FlushAll => {
                self.flush_all();
                RedisAnswer::Ok
            }
        }
    }
}

/// The Redis node's main task.
pub async fn run(state: Arc<Mutex<RedisState>>, network: Network) {
    lock(&state).crash();
    let endpoint = network.bind(redis_address());
    rpc::serve(endpoint, move |request: RedisRequest| {
        let answer = lock(&state).handle(request, Instant::now());
        async move { Some(answer) }
    })
    .await;
}

/// A Redis client on the node that created it.
#[derive(Clone)]
pub struct SimCache {
    endpoint: Endpoint,
    request_timeout: Duration,
}

impl SimCache {
    /// A client using `endpoint`.
    pub fn new(endpoint: Endpoint, request_timeout: Duration) -> SimCache {
        SimCache {
            endpoint,
            request_timeout,
        }
    }

    async fn call(&self, request: RedisRequest) -> Result<RedisAnswer, PortError> {
        rpc::call(
            &self.endpoint,
            redis_address(),
            request,
            self.request_timeout,
        )
        .await
        .ok_or_else(|| PortError::Unavailable {
            service: SERVICE,
            detail: "no answer".to_string(),
        })
    }

    /// `FLUSHALL`: drops every key.
    pub async fn flushall(&self) -> Result<(), PortError> {
        self.call(RedisRequest::FlushAll).await.map(|_| ())
    }
}

impl DedupCache for SimCache {
    async fn contains_batch(&self, keys: &[DeliveryKey]) -> Result<Vec<bool>, PortError> {
        let request = RedisRequest::Exists(keys.iter().map(DeliveryKey::to_bytes).collect());
        match self.call(request).await? {
            RedisAnswer::Exists(found) if found.len() == keys.len() => Ok(found),
            other => Err(PortError::Rejected {
                service: SERVICE,
                detail: format!("unexpected answer {other:?}"),
            }),
        }
    }

    async fn remember_batch(&self, keys: &[DeliveryKey], ttl: Duration) -> Result<(), PortError> {
        let request =
            RedisRequest::SetWithTtl(keys.iter().map(DeliveryKey::to_bytes).collect(), ttl);
        self.call(request).await.map(|_| ())
    }
}
