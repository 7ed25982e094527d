//! The Redis dedup cache against a real Redis (started by `scripts/services-up`; the URL comes
//! from `HOLDFAST_REDIS_URL`). A missing URL is a failure, never a skip.

use holdfast::adapters::RedisCache;
use holdfast::event::EventKind;
use holdfast::idempotency::{DeliveryKey, IdempotencyKey};
use holdfast::ports::DedupCache;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::RwLock;

/// Tests that flush or restart Redis take this for writing; the others for reading.
static SERVICE: RwLock<()> = RwLock::const_new(());

fn redis_url() -> String {
    std::env::var("HOLDFAST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "HOLDFAST_REDIS_URL is not set: run scripts/services-up, then `source .services/env`"
        )
    })
}

/// Keys no other run or test uses.
fn keys(test: &str, count: usize) -> Vec<DeliveryKey> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (0..count)
        .map(|index| {
            let kind = EventKind::ALL[index % EventKind::ALL.len()];
            DeliveryKey {
                key: IdempotencyKey {
                    order_id: format!("{test}-{}-{nanos}-{index}", std::process::id()),
                    kind,
                    discriminator: kind.repeats().then(|| format!("e{index}")),
                },
                event_id: format!("e{index}"),
                user_id: "u".to_owned(),
                at_ms: 1_700_000_000_000,
                amount_minor: None,
            }
        })
        .collect()
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Goal: remembered keys are found, others are not, answers keep input order. Method: remember
/// every other key of a batch, ask about the whole batch.
#[tokio::test]
async fn remembered_keys_are_found_in_order() {
    let _shared = SERVICE.read().await;
    let cache = RedisCache::connect(&redis_url()).await.unwrap();
    let keys = keys("roundtrip", 40);
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![false; 40]);
    let remembered: Vec<DeliveryKey> = keys.iter().step_by(2).cloned().collect();
    cache
        .remember_batch(&remembered, Duration::from_secs(60))
        .await
        .unwrap();
    let expected: Vec<bool> = (0..40).map(|index| index % 2 == 0).collect();
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), expected);
    assert_eq!(cache.contains_batch(&[]).await.unwrap(), Vec::<bool>::new());
    cache
        .remember_batch(&[], Duration::from_secs(1))
        .await
        .unwrap();
}

/// Goal: keys expire after their TTL, and a zero TTL forgets at once (as in the in-memory
/// cache). Method: remember with 300 ms, check before and after; remember again with zero.
#[tokio::test]
async fn keys_expire_after_their_ttl() {
    let _shared = SERVICE.read().await;
    let cache = RedisCache::connect(&redis_url()).await.unwrap();
    let keys = keys("ttl", 3);
    cache
        .remember_batch(&keys, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![true; 3]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![false; 3]);
    cache
        .remember_batch(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    cache
        .remember_batch(&keys[..1], Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        cache.contains_batch(&keys).await.unwrap(),
        vec![false, true, true]
    );
}

/// Goal: FLUSHALL (a lost cache) makes every key unknown. Method: remember, flush, ask.
#[tokio::test]
async fn flushall_forgets_everything() {
    let _exclusive = SERVICE.write().await;
    let url = redis_url();
    let cache = RedisCache::connect(&url).await.unwrap();
    let keys = keys("flush", 5);
    cache
        .remember_batch(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![true; 5]);
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut raw(&url).await)
        .await
        .unwrap();
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![false; 5]);
}

/// Goal: the adapter survives a Redis restart: calls during the outage fail as outages, and
/// calls after it work on the same `RedisCache`. Method: restart Redis with
/// `scripts/services-up --restart redis`, then retry until answered.
#[tokio::test]
async fn reconnects_after_a_redis_restart() {
    let _exclusive = SERVICE.write().await;
    let cache = RedisCache::connect(&redis_url()).await.unwrap();
    let keys = keys("restart", 4);
    cache
        .remember_batch(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    let status = Command::new(&script)
        .args(["--restart", "redis"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} --restart redis failed",
        script.display()
    );
    let mut outages = 0;
    let answer = loop {
        match cache.contains_batch(&keys).await {
            Ok(answer) => break answer,
            Err(error) => {
                assert!(error.is_outage(), "a restart is an outage: {error}");
                outages += 1;
                assert!(outages < 100, "no answer 10 s after the restart: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // No persistence: the restarted Redis is empty, which the protocol tolerates.
    assert_eq!(answer, vec![false; 4]);
    cache
        .remember_batch(&keys, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![true; 4]);
}

/// Goal: a Redis that is not there is a connect error, not a hang. Method: connect to a
/// closed loopback port.
#[tokio::test]
async fn connecting_to_nothing_fails() {
    let started = std::time::Instant::now();
    assert!(RedisCache::connect("redis://127.0.0.1:1/").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Goal: while Redis is down every call is an outage (so the protocol degrades instead of
/// dead-lettering), and the same `RedisCache` works again once Redis is back. Method:
/// `scripts/services-up --stop redis`, call both methods, `scripts/services-up`, retry.
#[tokio::test]
async fn a_stopped_redis_is_an_outage_then_recovers() {
    let _exclusive = SERVICE.write().await;
    let cache = RedisCache::connect(&redis_url()).await.unwrap();
    let keys = keys("stopped", 3);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services-up");
    assert!(Command::new(&script)
        .args(["--stop", "redis"])
        .status()
        .unwrap()
        .success());
    let lookup = cache.contains_batch(&keys).await;
    let write = cache.remember_batch(&keys, Duration::from_secs(60)).await;
    // Start again before asserting, so that a failure leaves the services up.
    assert!(Command::new(&script).status().unwrap().success());
    let error = lookup.unwrap_err();
    assert!(error.is_outage(), "{error}");
    let error = write.unwrap_err();
    assert!(error.is_outage(), "{error}");
    let mut attempts = 0;
    loop {
        match cache.remember_batch(&keys, Duration::from_secs(60)).await {
            Ok(()) => break,
            Err(error) => {
                attempts += 1;
                assert!(
                    attempts < 100,
                    "still failing 10 s after the start: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert_eq!(cache.contains_batch(&keys).await.unwrap(), vec![true; 3]);
}

/// Goal: credentials Redis refuses stop start-up at once, not an outage to wait out, and the
/// password never shows in the error (the redis client keeps the server's words to itself:
/// the error says the authentication failed). Method: connect with a password to the test
/// Redis, which has none configured, so it refuses the AUTH.
#[tokio::test]
async fn refused_credentials_fail_at_once_with_the_servers_message() {
    let url = redis_url().replacen("redis://", "redis://:hf-wrong-secret@", 1);
    let started = std::time::Instant::now();
    let Err(error) = RedisCache::connect(&url).await else {
        panic!("a password Redis does not have was accepted");
    };
    assert!(!error.is_unavailable(), "{error}");
    let text = error.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("hf-wrong-secret"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
