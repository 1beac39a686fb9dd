//! The deployment files say what the tests run: the compose file's Kafka is
//! the version `deploy/kafka/pom.xml` pins, with the broker settings
//! `deploy/kafka/node` gives every node of the three-node test cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The settings `deploy/kafka/node` shares across a cluster of `replication`.
fn node_properties(replication: u32) -> BTreeMap<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/node");
    let output = Command::new(script)
        .args([
            "--print-properties",
            "--replication",
            &replication.to_string(),
        ])
        .output()
        .expect("running deploy/kafka/node --print-properties");
    assert!(
        output.status.success(),
        "deploy/kafka/node --print-properties failed"
    );
    String::from_utf8(output.stdout)
        .expect("text")
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// The apache/kafka image's environment name for a broker property.
fn image_variable(property: &str) -> String {
    format!(
        "KAFKA_{}",
        property.replace('_', "__").replace('.', "_").to_uppercase()
    )
}

/// `NAME: value` lines of the compose file's shared Kafka environment.
fn compose_kafka_environment(compose: &str) -> BTreeMap<String, String> {
    let block = compose
        .split("x-kafka: &kafka")
        .nth(1)
        .and_then(|rest| rest.split("\nx-").next())
        .expect("an x-kafka block in deploy/docker-compose.yml");
    block
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(": ")?;
            name.starts_with("KAFKA_")
                .then(|| (name.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

#[test]
fn the_compose_files_kafka_is_the_pinned_version() {
    let pom = repository_file("deploy/kafka/pom.xml");
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("<kafka.version> in the pom");
    let compose = repository_file("deploy/docker-compose.yml");
    assert!(
        compose.contains(&format!("image: apache/kafka:{version}\n")),
        "deploy/docker-compose.yml does not run apache/kafka:{version}"
    );
}

#[test]
fn the_compose_files_brokers_have_the_cluster_tests_settings() {
    let expected = node_properties(3);
    assert!(expected.contains_key("min.insync.replicas"), "{expected:?}");
    let compose = compose_kafka_environment(&repository_file("deploy/docker-compose.yml"));
    for (property, value) in &expected {
        let variable = image_variable(property);
        assert_eq!(
            compose.get(&variable),
            Some(value),
            "deploy/docker-compose.yml sets {variable} (broker {property}) differently from the cluster tests"
        );
    }
}

#[test]
fn a_three_node_cluster_keeps_writing_with_one_node_down_and_never_elects_an_unclean_leader() {
    let properties = node_properties(3);
    for (property, value) in [
        ("default.replication.factor", "3"),
        ("min.insync.replicas", "2"),
        ("unclean.leader.election.enable", "false"),
        ("offsets.topic.replication.factor", "3"),
    ] {
        assert_eq!(
            properties.get(property).map(String::as_str),
            Some(value),
            "{property}"
        );
    }
    let single = node_properties(1);
    assert_eq!(
        single.get("min.insync.replicas").map(String::as_str),
        Some("1")
    );
}

/// The lines of the compose file's service `name`, up to the next service.
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("  {name}:");
    compose
        .lines()
        .skip_while(|line| *line != start)
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .collect()
}

/// The secrets a compose service's lines (from [`compose_service`]) give
/// it: its `secrets: [a, b]` line.
fn compose_secrets<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    lines
        .iter()
        .find_map(|line| line.trim().strip_prefix("secrets: ["))
        .and_then(|list| list.strip_suffix(']'))
        .map(|list| list.split(',').map(str::trim).collect())
        .unwrap_or_default()
}

#[test]
fn every_ingest_api_gets_the_results_token_keys_as_a_secret_never_in_plain_configuration() {
    let compose = repository_file("deploy/docker-compose.yml");
    assert!(
        compose.contains("\nsecrets:\n"),
        "a top-level secrets section"
    );
    assert!(
        compose.contains("  results_token_keys:\n    file: ${RESULTS_TOKEN_KEYS_FILE:?"),
        "the secret comes from the file RESULTS_TOKEN_KEYS_FILE names"
    );
    for service in ["ingest-api-1", "ingest-api-2"] {
        let lines = compose_service(&compose, service);
        assert!(!lines.is_empty(), "{service} is in the compose file");
        assert!(
            compose_secrets(&lines).contains(&"results_token_keys"),
            "{service} is given the secret: {lines:?}"
        );
    }
    assert!(
        compose.contains("SCORES_RESULTS_TOKEN_KEYS_FILE: /run/secrets/results_token_keys"),
        "the ingest APIs read the keys from the secret"
    );
    assert!(
        !compose.contains("SCORES_RESULTS_TOKEN_KEYS:"),
        "no keys in the compose environment"
    );

    let unit = repository_file("deploy/systemd/ingest-api.service");
    assert!(
        unit.contains("LoadCredential=results-token-keys:/etc/score-pipeline/results-token-keys\n"),
        "the unit loads the keys as a credential"
    );
    assert!(
        unit.contains("Environment=SCORES_RESULTS_TOKEN_KEYS_FILE=%d/results-token-keys\n"),
        "and points the API at it"
    );
    let example = repository_file("deploy/systemd/ingest-api.env.example");
    assert!(
        example.contains("#SCORES_RESULTS_TOKEN_KEYS="),
        "the env example shows the alternative, commented out (not both)"
    );
}

#[test]
fn every_ingest_api_and_projector_gets_the_account_pepper_as_a_secret_never_in_plain_configuration()
{
    let compose = repository_file("deploy/docker-compose.yml");
    assert!(
        compose.contains("  account_pepper:\n    file: ${ACCOUNT_PEPPER_FILE:?"),
        "the secret comes from the file ACCOUNT_PEPPER_FILE names"
    );
    for service in ["ingest-api-1", "ingest-api-2", "projector-1", "projector-2"] {
        let lines = compose_service(&compose, service);
        assert!(!lines.is_empty(), "{service} is in the compose file");
        assert!(
            compose_secrets(&lines).contains(&"account_pepper"),
            "{service} is given the secret: {lines:?}"
        );
    }
    let shared = compose
        .split("x-service: &service")
        .nth(1)
        .and_then(|rest| rest.split("\nservices:").next())
        .expect("an x-service block");
    assert!(
        shared.contains("SCORES_ACCOUNT_PEPPER_FILE: /run/secrets/account_pepper"),
        "every service reads the pepper from the secret"
    );
    assert!(
        !compose.contains("SCORES_ACCOUNT_PEPPER:"),
        "no pepper in the compose environment"
    );

    for (unit, example) in [
        (
            "deploy/systemd/ingest-api.service",
            "deploy/systemd/ingest-api.env.example",
        ),
        (
            "deploy/systemd/projector.service",
            "deploy/systemd/projector.env.example",
        ),
    ] {
        let unit_text = repository_file(unit);
        assert!(
            unit_text
                .contains("LoadCredential=account-pepper:/etc/score-pipeline/account-pepper\n"),
            "{unit} loads the pepper as a credential"
        );
        assert!(
            unit_text.contains("Environment=SCORES_ACCOUNT_PEPPER_FILE=%d/account-pepper\n"),
            "{unit} points the service at it"
        );
        let example_text = repository_file(example);
        assert!(
            example_text.contains("\n#SCORES_ACCOUNT_PEPPER="),
            "{example} shows the alternative, commented out (not both)"
        );
        assert!(
            !example_text.contains("\nSCORES_ACCOUNT_PEPPER="),
            "{example} sets no pepper in plain configuration"
        );
    }
}
