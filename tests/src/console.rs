//! Reading the log with a client that is not ours: Apache Kafka's own
//! console consumer, from the jars `deploy/local` fetches (the tools jar
//! beside the broker's), run as a separate JVM.

use std::process::Command;
use std::time::Duration;

use crate::processes::kafka_libs;

/// One record as the console consumer printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    /// `None` for a tombstone.
    pub value: Option<String>,
}

/// Every record of every partition of `topic` on `bootstrap`, from the
/// start, read by `kafka.tools.consumer.ConsoleConsumer`; it stops once no
/// record has come for `idle`.
///
/// # Panics
///
/// When Java or the tools jar is missing, or the consumer fails.
pub fn console_consume(bootstrap: &str, topic: &str, idle: Duration) -> Vec<ConsoleRecord> {
    let classpath = format!("{}/*", kafka_libs().display());
    let output = Command::new("java")
        .args([
            "-cp",
            &classpath,
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
        ])
        .args([
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--from-beginning",
        ])
        .args(["--timeout-ms", &idle.as_millis().to_string()])
        .args(["--property", "print.partition=true"])
        .args(["--property", "print.offset=true"])
        .args(["--property", "print.key=true"])
        .args(["--property", "key.separator=\t"])
        .output()
        .expect("java runs the console consumer");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // It exits 1 when its timeout ends the read, which is how it is used.
    assert!(
        stderr.contains("Processed a total of"),
        "the console consumer failed: {stderr}"
    );
    // Its own log lines (the timeout that ends the read is logged as an
    // error) go to stdout too.
    String::from_utf8(output.stdout)
        .expect("the records are UTF-8")
        .lines()
        .filter(|line| line.starts_with("Partition:"))
        .map(parse_line)
        .collect()
}

/// `Partition:0\tOffset:5\t<key>\t<value>` (the value `null` for a
/// tombstone).
fn parse_line(line: &str) -> ConsoleRecord {
    let mut fields = line.splitn(4, '\t');
    let mut next = |what: &str| {
        fields
            .next()
            .unwrap_or_else(|| panic!("no {what} in the console consumer's line {line:?}"))
    };
    let partition = next("partition")
        .trim_start_matches("Partition:")
        .parse()
        .expect("a partition number");
    let offset = next("offset")
        .trim_start_matches("Offset:")
        .parse()
        .expect("an offset");
    let key = next("key").to_owned();
    let value = next("value");
    ConsoleRecord {
        partition,
        offset,
        key,
        value: (value != "null").then(|| value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_as_its_record_and_null_as_a_tombstone() {
        assert_eq!(
            parse_line("Partition:2\tOffset:17\tab/cd\t{\"a\":1}"),
            ConsoleRecord {
                partition: 2,
                offset: 17,
                key: "ab/cd".to_owned(),
                value: Some("{\"a\":1}".to_owned()),
            }
        );
        assert_eq!(parse_line("Partition:0\tOffset:3\tk\tnull").value, None);
    }
}
