//! Dead letters: a record that cannot be applied is published, with why and where it came
//! from, to the dead-letter topic, and only then acked. Nothing is dropped silently.

use crate::ports::{OutboundMessage, Record};

/// Header names on every dead letter.
pub const HEADER_ERROR: &str = "holdfast-error";
pub const HEADER_SOURCE_PARTITION: &str = "holdfast-source-partition";
pub const HEADER_SOURCE_OFFSET: &str = "holdfast-source-offset";
pub const HEADER_ATTEMPTS: &str = "holdfast-attempts";

/// Builds the dead letter of `record`: its own key and payload, its original headers, and the
/// error and source coordinates.
pub fn dead_letter(topic: &str, record: &Record, error: &str, attempts: u32) -> OutboundMessage {
    let mut headers = record.headers.clone();
    headers.push((HEADER_ERROR.to_owned(), error.as_bytes().to_vec()));
    headers.push((
        HEADER_SOURCE_PARTITION.to_owned(),
        record.partition.to_string().into_bytes(),
    ));
    headers.push((
        HEADER_SOURCE_OFFSET.to_owned(),
        record.offset.to_string().into_bytes(),
    ));
    headers.push((
        HEADER_ATTEMPTS.to_owned(),
        attempts.to_string().into_bytes(),
    ));
    OutboundMessage {
        topic: topic.to_owned(),
        key: record.key.clone().unwrap_or_default(),
        payload: record.payload.clone(),
        headers,
    }
}

/// Reads a header as UTF-8 text.
pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_error_and_coordinates() {
        let record = Record {
            partition: 3,
            offset: 42,
            key: Some(b"order-1".to_vec()),
            payload: bytes::Bytes::from_static(b"{not json"),
            headers: vec![("trace".to_owned(), b"abc".to_vec())],
        };
        let letter = dead_letter("orders.dlq", &record, "payload is not valid JSON", 1);
        assert_eq!(letter.topic, "orders.dlq");
        assert_eq!(letter.key, b"order-1");
        assert_eq!(letter.payload, record.payload);
        assert_eq!(header(&letter.headers, "trace"), Some("abc"));
        assert_eq!(
            header(&letter.headers, HEADER_ERROR),
            Some("payload is not valid JSON")
        );
        assert_eq!(header(&letter.headers, HEADER_SOURCE_PARTITION), Some("3"));
        assert_eq!(header(&letter.headers, HEADER_SOURCE_OFFSET), Some("42"));
        assert_eq!(header(&letter.headers, HEADER_ATTEMPTS), Some("1"));
    }
}
