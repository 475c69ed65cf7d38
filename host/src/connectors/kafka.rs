//! What the Kafka source and sink share: the client configuration and how
//! partitions are spread over subtasks.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;

/// How long connecting and metadata requests may take unless the spec says
/// otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// librdkafka settings Sluice sets itself: a spec's `properties` may not
/// override them (the source's exactly-once resume depends on them).
pub const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "transactional.id",
    "enable.idempotence",
];

/// The largest record value or key a Kafka source takes, and librdkafka's
/// fetch bound.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// A client configuration for `brokers` with the spec's `properties`.
pub(crate) fn client_config(brokers: &str, properties: Option<&BTreeMap<String, String>>, timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::new();
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "sluice")
        .set("socket.connection.setup.timeout.ms", &ms)
        .set("log_level", "3");
    for (k, v) in properties.into_iter().flatten() {
        c.set(k, v);
    }
    c
}

/// Java's `String.hashCode`.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The subtask (of `parallelism`) that reads `partition` of `topic`: Flink's
/// `KafkaSourceEnumerator.getSplitOwner`, so a topic's partitions go round
/// the subtasks from a start that depends on the topic.
pub fn owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let n = i64::from(parallelism.max(1));
    let start = i64::from(java_hash(topic).wrapping_mul(31) & 0x7FFF_FFFF) % n;
    ((start + i64::from(partition.max(0))) % n) as u32
}

/// `host:port[,host:port…]` with every part a plausible address.
pub fn check_brokers(brokers: &str) -> Result<(), String> {
    if brokers.trim().is_empty() {
        return Err("`brokers` is empty; give `host:port[,host:port…]`".into());
    }
    for b in brokers.split(',') {
        let b = b.trim();
        let b = b.split_once("://").map_or(b, |(_, rest)| rest);
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("`brokers`: {b:?} is not `host:port`"));
        }
    }
    Ok(())
}

/// A topic name Kafka accepts: 1 to 249 of letters, digits, `.`, `_`, `-`.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(ok) || topic == "." || topic == ".." {
        return Err(format!(
            "{topic:?} is not a Kafka topic name (1 to 249 letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

/// `properties` must not set what Sluice sets.
pub fn check_properties(properties: Option<&BTreeMap<String, String>>) -> Result<(), String> {
    match properties.into_iter().flatten().find(|(k, _)| RESERVED.contains(&k.as_str())) {
        Some((k, _)) => Err(format!(
            "`properties` may not set `{k}`: Sluice sets it (use the source or sink's own settings)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_string_hash() {
        // Values from Java's "…".hashCode().
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("hello"), 99_162_322);
        // Overflows i32: "Hello, World!".hashCode() == 1498789909, "abcdefghij" == -634317659.
        assert_eq!(java_hash("Hello, World!"), 1_498_789_909);
        assert_eq!(java_hash("abcdefghij"), -634_317_659);
    }

    #[test]
    fn partitions_go_round_the_subtasks() {
        for p in [1, 2, 3, 7] {
            let owners: Vec<u32> = (0..p as i32 * 3).map(|i| owner("events", i, p)).collect();
            for s in 0..p {
                assert_eq!(owners.iter().filter(|o| **o == s).count(), 3, "parallelism {p}: {owners:?}");
            }
            // Consecutive partitions go to consecutive subtasks.
            assert!(owners.windows(2).all(|w| (w[0] + 1) % p == w[1]));
        }
    }

    #[test]
    fn broker_lists() {
        assert!(check_brokers("127.0.0.1:9092,b:1").is_ok());
        assert!(check_brokers("nohost").is_err());
        assert!(check_brokers("").is_err());
        assert!(check_topic("a.b-c_1").is_ok());
        assert!(check_topic("a b").is_err());
    }
}
