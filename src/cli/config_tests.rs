use super::*;

const EXAMPLE: &str = include_str!("../../docs/holdfast.toml");

fn parse(text: &str) -> Settings {
    Settings::parse(text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

/// Goal: the example file sets every key a config can hold, each at the value a command uses
/// when nothing is set. Method: the example parsed equals the effective configuration (every
/// key set) of an empty one with the example's addresses.
#[test]
fn the_example_file_is_every_key_at_its_default() {
    let example = parse(EXAMPLE);
    let addresses = Settings {
        brokers: example.brokers.clone(),
        redis: example.redis.clone(),
        postgres: example.postgres.clone(),
        ..Settings::default()
    };
    let mut expected = addresses.effective().unwrap();
    // The endpoint is off by default; the example shows it commented out.
    assert_eq!(expected.consumer.metrics, None);
    expected.consumer.metrics = None;
    assert_eq!(example, expected);
}

/// Goal: a later layer wins key by key and leaves the others alone, in every section and in
/// the `[kafka]` table. Method: two layers that overlap in some keys.
#[test]
fn a_later_layer_wins_key_by_key() {
    let file = parse(
        r#"
        topic = "from-file"
        dead_letter_topic = "file.dlq"
        [consumer]
        batch_size = 100
        concurrency = 3
        [compensator]
        delay_ms = 7
        [kafka]
        "session.timeout.ms" = 10000
        "enable.auto.offset.store" = false
        "client.id" = "file"
        "#,
    );
    let flags = Settings {
        topic: Some("from-flag".into()),
        consumer: ConsumerSection {
            batch_size: Some(200),
            ..ConsumerSection::default()
        },
        kafka: BTreeMap::from([("client.id".to_owned(), Property::Text("flag".into()))]),
        ..Settings::default()
    };
    let merged = file.overlay(flags);
    assert_eq!(merged.topic(), "from-flag");
    assert_eq!(merged.dead_letter_topic(), "file.dlq");
    let consumer = merged.consumer_config().unwrap();
    assert_eq!((consumer.batch_size, consumer.concurrency), (200, 3));
    assert_eq!(consumer.dead_letter_topic, "file.dlq");
    assert_eq!(
        consumer.commit_interval,
        ConsumerConfig::default().commit_interval
    );
    let compensator = merged.compensator_config().unwrap();
    assert_eq!(compensator.delay, Duration::from_millis(7));
    assert_eq!(compensator.topic, "from-flag");
    let merged = Settings {
        brokers: Some("b:1".into()),
        ..merged
    };
    let kafka = merged.kafka_settings().unwrap();
    assert_eq!(
        kafka.overrides,
        [
            ("client.id".to_owned(), "flag".to_owned()),
            ("enable.auto.offset.store".to_owned(), "false".to_owned()),
            ("session.timeout.ms".to_owned(), "10000".to_owned()),
        ]
    );
}

/// Goal: a typo is an error that names the key, at the top, in a section and as a wrong
/// type; an unreadable file names the file.
#[test]
fn unknown_keys_and_wrong_types_are_errors_naming_them() {
    for (text, named) in [
        ("brokerz = \"b\"", "brokerz"),
        ("[consumer]\nbatch = 5", "batch"),
        ("[compensator]\ndelay = 5", "delay"),
        ("[consumers]\nbatch_size = 5", "consumers"),
        ("[consumer]\nbatch_size = \"many\"", "batch_size"),
        ("[consumer]\nbatch_size = -1", "batch_size"),
        ("[kafka]\n\"a.b\" = [1, 2]", "a.b"),
    ] {
        let error = Settings::parse(text).unwrap_err();
        assert!(error.contains(named), "{text}: {error}");
    }
    let missing = Path::new("/nonexistent/holdfast.toml");
    let error = Settings::load(Some(missing)).unwrap_err();
    assert!(error.contains("/nonexistent/holdfast.toml"), "{error}");
}

/// Goal: values the consumer refuses are refused from the file too, and a missing address
/// says where it can come from.
#[test]
fn bad_values_and_missing_addresses_are_refused_clearly() {
    let zero = parse("[consumer]\nconcurrency = 0");
    let error = zero.consumer_config().unwrap_err();
    assert!(error.contains("concurrency"), "{error}");
    let window = parse("[consumer]\nin_flight_max = 10");
    let error = window.consumer_config().unwrap_err();
    assert!(error.contains("in_flight_max"), "{error}");
    let error = Settings::default().kafka_settings().unwrap_err();
    for part in ["--brokers", "HOLDFAST_KAFKA_BROKERS", "`brokers`"] {
        assert!(error.contains(part), "{error}");
    }
    let unsafe_commit = parse("brokers = \"b:1\"\n[kafka]\n\"enable.auto.commit\" = true");
    assert!(unsafe_commit.kafka_settings().is_err());
    let allowed =
        parse("brokers = \"b:1\"\nallow_unsafe = true\n[kafka]\n\"enable.auto.commit\" = true");
    assert!(allowed.kafka_settings().is_ok());
}

/// Goal: the compensator checks the consumer's group unless told otherwise, and never runs
/// in it.
#[test]
fn the_compensator_checks_the_consumer_group_and_refuses_to_join_it() {
    let settings = parse("[consumer]\ngroup = \"orders-app\"");
    assert_eq!(
        settings.compensator_config().unwrap().main_group,
        "orders-app"
    );
    let same = parse("[compensator]\ngroup = \"holdfast\"");
    let error = same.compensator_config().unwrap_err();
    assert!(error.contains("own group"), "{error}");
}

/// Goal: `holdfast config` never prints a secret: the passwords of both URL forms and
/// librdkafka's secret properties are masked, everything else is printed as given.
#[test]
fn the_printed_configuration_masks_every_secret() {
    let settings = parse(
        r#"
        redis = "redis://:hunter2@127.0.0.1:6379/0"
        postgres = "host=127.0.0.1 user=app password=hunter2 dbname=orders"
        [kafka]
        "sasl.password" = "hunter2"
        "ssl.key.password" = "hunter2"
        "sasl.username" = "app"
        "#,
    );
    let printed = toml::to_string(&settings.effective().unwrap()).unwrap();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("redis://:***@127.0.0.1:6379/0"),
        "{printed}"
    );
    assert!(
        printed.contains("\"host=127.0.0.1 user=app password=*** dbname=orders\""),
        "{printed}"
    );
    assert!(printed.contains("\"sasl.username\" = \"app\""), "{printed}");
    assert_eq!(
        mask_url("postgres://app:hunter2@db:5432/orders"),
        "postgres://app:***@db:5432/orders"
    );
    assert_eq!(
        mask_url("postgres://app@db/orders"),
        "postgres://app@db/orders"
    );
}

/// Goal: the progress mode is read by name from a file and a flag wins over it; an unknown
/// mode is refused naming the choices. Method: a file with `store`, a flag with `kafka`, and
/// a file with a typo.
#[test]
fn the_progress_mode_is_read_by_name() {
    let file = parse("[consumer]\nprogress = \"store\"");
    assert_eq!(
        file.consumer_config().unwrap().progress,
        ProgressMode::Store
    );
    let flags = Settings {
        consumer: ConsumerSection {
            progress: Some(ProgressMode::Kafka),
            ..ConsumerSection::default()
        },
        ..Settings::default()
    };
    let merged = file.overlay(flags);
    assert_eq!(
        merged.consumer_config().unwrap().progress,
        ProgressMode::Kafka
    );
    let error = Settings::parse("[consumer]\nprogress = \"stor\"").unwrap_err();
    assert!(
        error.contains("kafka") && error.contains("store"),
        "{error}"
    );
}

/// Every key set, each to a value no other key has and no default has.
const EVERY_KEY: &str = r#"
brokers = "b1:9092,b2:9092"
topic = "t-orders"
redis = "redis://127.0.0.1:1/3"
postgres = "postgres://app@127.0.0.1:2/orders"
dead_letter_topic = "t-orders.dead"
connect_timeout_s = 41
allow_unsafe = true
[consumer]
group = "g-main"
batch_size = 301
concurrency = 5
commit_interval_ms = 1003
poll_timeout_ms = 104
record_attempts_max = 6
backoff_initial_ms = 55
backoff_max_ms = 5007
stall_after_ms = 60008
revoke_grace_ms = 5009
drain_timeout_ms = 30010
cache_ttl_s = 3611
jitter_seed = 12
progress = "store"
in_flight_max = 20013
span_max = 400014
metadata_budget_bytes = 3015
metrics = "127.0.0.1:9016"
ready_backlog_max = 10017
[compensator]
group = "g-compensator"
main_group = "g-checked"
delay_ms = 2018
check_interval_ms = 519
attempts_max = 4
batch_size = 221
poll_timeout_ms = 122
in_flight_max = 10023
span_max = 200024
metadata_budget_bytes = 2025
[kafka]
"client.id" = "c-26"
"#;

/// Goal: every key reaches the field it names, in the consumer's, the compensator's and the
/// broker's configuration, and `holdfast config` prints it back unchanged. Method: a file
/// with every key at a value of its own; a key wired to another's field shows up as a wrong
/// value in the configuration or in the printed file.
#[test]
fn every_key_reaches_the_field_it_names() {
    let settings = parse(EVERY_KEY);
    let ms = Duration::from_millis;
    let consumer = settings.consumer_config().unwrap();
    assert_eq!(
        (consumer.batch_size, consumer.concurrency),
        (301, 5),
        "batch_size, concurrency"
    );
    assert_eq!(
        [
            consumer.commit_interval,
            consumer.poll_timeout,
            consumer.backoff_initial,
            consumer.backoff_max,
            consumer.stall_after,
            consumer.revoke_grace,
            consumer.drain_timeout,
            consumer.cache_ttl,
        ],
        [
            ms(1003),
            ms(104),
            ms(55),
            ms(5007),
            ms(60008),
            ms(5009),
            ms(30010),
            Duration::from_secs(3611),
        ]
    );
    assert_eq!(consumer.record_attempts_max, 6);
    assert_eq!(consumer.jitter_seed, 12);
    assert_eq!(consumer.progress, ProgressMode::Store);
    let limits = &consumer.limits;
    assert_eq!(
        (
            limits.in_flight_max,
            limits.span_max,
            limits.metadata_budget_bytes
        ),
        (20013, 400014, 3015)
    );
    assert_eq!(consumer.dead_letter_topic, "t-orders.dead");
    assert_eq!(settings.group(), "g-main");
    assert_eq!(settings.ready_backlog_max(), 10017);
    assert_eq!(settings.connect_timeout(), Duration::from_secs(41));

    let compensator = settings.compensator_config().unwrap();
    assert_eq!(settings.compensator_group(), "g-compensator");
    assert_eq!(compensator.main_group, "g-checked");
    assert_eq!(
        (
            compensator.topic.as_str(),
            compensator.dead_letter_topic.as_str()
        ),
        ("t-orders", "t-orders.dead")
    );
    assert_eq!(
        [
            compensator.delay,
            compensator.check_interval,
            compensator.poll_timeout
        ],
        [ms(2018), ms(519), ms(122)]
    );
    assert_eq!((compensator.attempts_max, compensator.batch_size), (4, 221));
    let limits = &compensator.limits;
    assert_eq!(
        (
            limits.in_flight_max,
            limits.span_max,
            limits.metadata_budget_bytes
        ),
        (10023, 200024, 2025)
    );

    let kafka = settings.kafka_settings().unwrap();
    assert_eq!(kafka.brokers, "b1:9092,b2:9092");
    assert!(kafka.allow_unsafe);
    assert_eq!(
        kafka.overrides,
        [("client.id".to_owned(), "c-26".to_owned())]
    );
    assert_eq!(settings.redis_url().unwrap(), "redis://127.0.0.1:1/3");
    assert_eq!(
        settings.postgres_url().unwrap(),
        "postgres://app@127.0.0.1:2/orders"
    );
    assert_eq!(settings.effective().unwrap(), settings);
}

/// Goal: the merge carries every key: a layer's keys win over a lower layer's and survive an
/// empty layer over them. Method: [`EVERY_KEY`] over an empty layer, over a layer that sets
/// every key differently, and under an empty layer.
#[test]
fn a_full_layer_wins_every_key() {
    let every = parse(EVERY_KEY);
    let other = parse(
        &EVERY_KEY
            .replace("= 30010", "= 30000")
            .replace("c-26", "c-0"),
    );
    assert_ne!(other, every);
    assert_eq!(other.clone().overlay(every.clone()), every);
    assert_eq!(every.clone().overlay(Settings::default()), every);
    assert_eq!(Settings::default().overlay(every.clone()), every);
}
