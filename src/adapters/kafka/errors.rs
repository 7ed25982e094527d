//! rdkafka's errors in the ports' three classes.

use super::LOG;
use crate::adapters::{rejected, unavailable};
use crate::ports::PortError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Maps an rdkafka error: the broker unreachable or slow is an outage; a member that lost its
/// generation or partitions is fenced; anything else refused this request.
pub(crate) fn port_error(error: &KafkaError) -> PortError {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::BrokerTransportFailure
            | Code::AllBrokersDown
            | Code::OperationTimedOut
            | Code::RequestTimedOut
            | Code::MessageTimedOut
            | Code::TimedOutQueue
            | Code::NetworkException
            | Code::CoordinatorNotAvailable
            | Code::CoordinatorLoadInProgress
            | Code::NotCoordinator
            | Code::WaitingForCoordinator
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::Resolve
            | Code::BrokerDestroy
            | Code::DestroyBroker,
        ) => unavailable(LOG, error),
        Some(
            Code::IllegalGeneration
            | Code::UnknownMemberId
            | Code::RebalanceInProgress
            | Code::FencedInstanceId
            | Code::Fenced
            | Code::AssignmentLost
            | Code::State,
        ) => PortError::Fenced {
            service: LOG,
            detail: error.to_string(),
        },
        _ => rejected(LOG, error),
    }
}
