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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as Code;

    fn classed(code: Code) -> PortError {
        port_error(&KafkaError::ConsumerCommit(code))
    }

    /// Goal: each error the consumer and producer meet lands in the class the pipeline acts
    /// on: an outage is waited out, a fenced member gives its partitions up, anything else is
    /// refused. Method: every code named above, and neighbours that stay refusals.
    #[test]
    fn codes_are_outages_fenced_or_refused() {
        let outages = [
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::OperationTimedOut,
            Code::RequestTimedOut,
            Code::MessageTimedOut,
            Code::TimedOutQueue,
            Code::NetworkException,
            Code::CoordinatorNotAvailable,
            Code::CoordinatorLoadInProgress,
            Code::NotCoordinator,
            Code::WaitingForCoordinator,
            Code::LeaderNotAvailable,
            Code::NotLeaderForPartition,
            Code::Resolve,
            Code::BrokerDestroy,
            Code::DestroyBroker,
        ];
        for code in outages {
            assert!(classed(code).is_outage(), "{code:?}");
        }
        let fenced = [
            Code::IllegalGeneration,
            Code::UnknownMemberId,
            Code::RebalanceInProgress,
            Code::FencedInstanceId,
            Code::Fenced,
            Code::AssignmentLost,
            Code::State,
        ];
        for code in fenced {
            assert!(
                matches!(classed(code), PortError::Fenced { .. }),
                "{code:?}"
            );
        }
        let refused = [
            Code::MessageSizeTooLarge,
            Code::TopicAuthorizationFailed,
            Code::GroupAuthorizationFailed,
            Code::OffsetMetadataTooLarge,
            Code::InvalidCommitOffsetSize,
            Code::UnknownTopicOrPartition,
        ];
        for code in refused {
            assert!(
                matches!(classed(code), PortError::Rejected { .. }),
                "{code:?}"
            );
        }
        let no_code = port_error(&KafkaError::Canceled);
        assert!(matches!(no_code, PortError::Rejected { .. }), "{no_code:?}");
    }
}
