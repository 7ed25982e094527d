//! A broker's replica fetcher for one source broker: one fetch at a time for every partition
//! this broker follows there, as Kafka runs a fetcher per source broker (not per partition).

use super::broker::{BrokerAnswer, BrokerRequest, BrokerState, FollowedPartition, FollowerFetch};
use super::{broker_address, KafkaConfig};
use crate::world::lock::lock;
use crate::world::rpc;
use crate::world::transport::Endpoint;
use madsim::time::{sleep, timeout};
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;

/// Pause before a fetcher retries after a partition's error or an unanswered fetch.
const BACKOFF: Duration = Duration::from_millis(20);

/// Fetches from `leader` for as long as the broker node lives.
pub async fn run(
    state: Arc<Mutex<BrokerState>>,
    endpoint: Endpoint,
    leader: usize,
    config: KafkaConfig,
) {
    loop {
        let (follower, incarnation, partitions, table_changed) = {
            let broker = lock(&state);
            let (follower, incarnation) = broker.follower_id();
            let partitions = broker.followed_from(leader);
            (follower, incarnation, partitions, broker.table_changed())
        };
        if partitions.is_empty() {
            // Nothing to follow there until the partition table changes.
            let _ = timeout(config.replica_fetch_wait(), table_changed.notified()).await;
            continue;
        }
        let request = BrokerRequest::ReplicaFetch(FollowerFetch {
            follower,
            incarnation,
            partitions: partitions.clone(),
        });
        let answer = rpc::call(
            &endpoint,
            broker_address(leader),
            request,
            config.request_timeout,
        );
        let Some(answer) =
            unless_retargeted(&state, leader, &partitions, &table_changed, answer).await
        else {
            continue; // the table moved a partition from or to this leader: fetch anew at once
        };
        if !lock(&state).apply_replicated(leader, &partitions, answer) {
            sleep(BACKOFF).await;
        }
    }
}

/// Waits for a fetch's answer, or gives it up (`None`) as soon as the partition table changes
/// what this broker follows from `leader`: Kafka moves a partition to the new leader's fetcher
/// at once, while the old leader, not told yet, may hold the fetch for its whole wait.
async fn unless_retargeted<F>(
    state: &Mutex<BrokerState>,
    leader: usize,
    sent: &[FollowedPartition],
    table_changed: &Notify,
    call: F,
) -> Option<Option<BrokerAnswer>>
where
    F: Future<Output = Option<BrokerAnswer>>,
{
    let mut call = pin!(call);
    loop {
        let mut notified = pin!(table_changed.notified());
        let answered = poll_fn(|cx| {
            if let Poll::Ready(answer) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            notified.as_mut().poll(cx).map(|()| None)
        })
        .await;
        if let Some(answer) = answered {
            return Some(answer);
        }
        let now = lock(state).followed_from(leader);
        let targets = |list: &[FollowedPartition]| {
            list.iter()
                .map(|p| (p.partition, p.leader_epoch))
                .collect::<Vec<_>>()
        };
        if targets(&now) != targets(sent) {
            return None;
        }
    }
}
