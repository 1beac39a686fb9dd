//! Hostile input over real HTTP: every malformed request is a 4xx with a
//! clear error (never a 5xx, never a dropped connection without an answer
//! where HTTP allows one), and appends nothing; odd but valid text is stored
//! verbatim.

use std::time::Duration;

use pipeline_tests::{
    RunningApi, RunningProjector, TestDatabase, TestTopic, eventually, unique_group,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes as one HTTP/1.1 exchange and returns the status code and
/// body of the answer (0 when the server closed without one).
async fn exchange(api: &RunningApi, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(api.address)
        .await
        .expect("connecting to the API");
    stream.write_all(request).await.expect("sending");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the API neither answered nor closed within 20 s"
    );
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

fn request(path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const JSON: Option<&str> = Some("application/json");

/// A valid legacy form with one field replaced.
fn form_with(field: &str, value: &str) -> Vec<u8> {
    let mut pairs = vec![
        ("acc_nbr", "%2213800138000%22".to_owned()),
        ("grade1", "5".to_owned()),
        ("grade2", "4".to_owned()),
        ("grade3", "3".to_owned()),
    ];
    pairs.retain(|(name, _)| *name != field);
    pairs.push((field, value.to_owned()));
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

#[tokio::test]
async fn malformed_requests_are_4xx_with_a_clear_error_and_append_nothing() {
    let topic = TestTopic::create(1).await;
    let api = RunningApi::start(&topic.kafka).await;

    let random: Vec<u8> = (0..600_u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let nested = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let big = vec![b'a'; 17 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "random bytes as a form",
            request("/score", FORM, &random),
            400,
        ),
        (
            "random bytes as JSON",
            request("/v1/scores", JSON, &random),
            400,
        ),
        (
            "invalid UTF-8",
            request("/score", FORM, &form_with("txt1", "%22%FF%FE%22")),
            400,
        ),
        (
            "raw invalid UTF-8 bytes",
            request("/score", FORM, b"acc_nbr=\xff\xfe&grade1=5"),
            400,
        ),
        (
            "invalid percent-encoding",
            request("/score", FORM, &form_with("txt1", "%zz")),
            400,
        ),
        (
            "truncated percent-encoding",
            request("/score", FORM, &form_with("txt1", "%4")),
            400,
        ),
        ("body over the limit", request("/score", FORM, &big), 413),
        (
            "JSON over the limit",
            request("/v1/scores", JSON, &big),
            413,
        ),
        (
            "deeply nested JSON",
            request("/v1/scores", JSON, nested.as_bytes()),
            400,
        ),
        (
            "duplicate form field",
            request(
                "/score",
                FORM,
                b"grade1=1&grade1=5&acc_nbr=%2213800138000%22&grade2=4&grade3=3",
            ),
            400,
        ),
        (
            "duplicate JSON field",
            request(
                "/v1/scores",
                JSON,
                br#"{"acc_nbr":"13800138000","grade1":1,"grade1":5,"grade2":4,"grade3":3}"#,
            ),
            400,
        ),
        (
            "wrong content type",
            request("/score", Some("text/plain"), b"hello"),
            415,
        ),
        (
            "missing content type",
            request("/v1/scores", None, b"{}"),
            415,
        ),
        (
            "number that overflows",
            request(
                "/score",
                FORM,
                &form_with("grade1", "99999999999999999999999"),
            ),
            400,
        ),
        (
            "huge exponent",
            request("/score", FORM, &form_with("grade1", "1e400")),
            400,
        ),
        (
            "fractional grade",
            request("/score", FORM, &form_with("grade2", "4.5")),
            400,
        ),
        (
            "NaN grade",
            request("/score", FORM, &form_with("grade2", "NaN")),
            400,
        ),
        (
            "negative grade",
            request("/score", FORM, &form_with("grade3", "-1")),
            400,
        ),
        (
            "grade above range",
            request("/score", FORM, &form_with("grade3", "6")),
            400,
        ),
        (
            "empty account number",
            request("/score", FORM, &form_with("acc_nbr", "%22%22")),
            400,
        ),
        (
            "whitespace account number",
            request("/score", FORM, &form_with("acc_nbr", "%22+++%22")),
            400,
        ),
        ("empty body", request("/score", FORM, b""), 400),
        ("empty JSON object", request("/v1/scores", JSON, b"{}"), 400),
        (
            "lone surrogate escape",
            request(
                "/v1/scores",
                JSON,
                br#"{"acc_nbr":"13800138000","grade1":5,"grade2":4,"grade3":3,"txt1":"\ud800"}"#,
            ),
            400,
        ),
        (
            "NUL in a comment",
            request(
                "/v1/scores",
                JSON,
                br#"{"acc_nbr":"13800138000","grade1":5,"grade2":4,"grade3":3,"txt1":"a\u0000b"}"#,
            ),
            400,
        ),
        (
            "null grade",
            request(
                "/v1/scores",
                JSON,
                br#"{"acc_nbr":"13800138000","grade1":null,"grade2":4,"grade3":3}"#,
            ),
            400,
        ),
        (
            "array as account",
            request(
                "/v1/scores",
                JSON,
                br#"{"acc_nbr":["13800138000"],"grade1":5,"grade2":4,"grade3":3}"#,
            ),
            400,
        ),
        (
            "SQL in the account number",
            request(
                "/score",
                FORM,
                &form_with("acc_nbr", "%221%27%3B+DROP+TABLE+grade%3B--%22"),
            ),
            400,
        ),
        (
            "unknown path",
            request("/score/../admin", FORM, b"x=1"),
            404,
        ),
    ];
    for (case, bytes, expected) in &cases {
        let (status, body) = exchange(&api, bytes).await;
        assert_eq!(status, *expected, "{case}: {body}");
        assert!(!body.is_empty(), "{case}: an error must say what is wrong");
    }

    // Chunked bodies (no Content-Length): over the limit, and malformed.
    let mut chunked = b"POST /v1/scores HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b' '; 0x400]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _) = exchange(&api, &chunked).await;
    assert_eq!(status, 413, "a chunked body over the limit");
    let broken = b"POST /score HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let (status, _) = exchange(&api, broken).await;
    assert!(
        status == 0 || (400..500).contains(&status),
        "broken chunking answered {status}"
    );

    assert_eq!(
        topic.record_count().await,
        0,
        "a malformed request reached the log"
    );
    api.stop().await;
}

#[tokio::test]
async fn odd_but_valid_text_is_stored_verbatim() {
    let topic = TestTopic::create(1).await;
    let database = TestDatabase::create().await;
    let api = RunningApi::start(&topic.kafka).await;
    let projector = RunningProjector::start(&topic.kafka, &database, &unique_group());

    let texts = [
        "zero\u{200b}width\u{200d}joiner\u{feff}",
        "\u{202e}right-to-left override\u{202c} and \u{5e9}\u{5dc}\u{5d5}\u{5dd}",
        "<script>alert('x')</script><img src=x onerror=alert(1)>",
        "1' OR '1'='1'; DROP TABLE grade; -- \\' \" `",
        "%00 %zz \\u0000 {{template}} ${jndi:ldap://x}",
    ];
    for (i, text) in texts.iter().enumerate() {
        let response = reqwest::Client::new()
            .post(api.url("/v1/scores"))
            .json(&serde_json::json!({"acc_nbr": format!("1380013800{i}"), "grade1": 1, "grade2": 2, "grade3": 3, "txt1": text}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{text:?}");
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            database.grade_count().await == 5
        })
        .await
    );
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT CAST(txt1 AS BINARY) FROM grade ORDER BY acc_nbr")
            .fetch_all(&database.pool)
            .await
            .unwrap();
    let expected: Vec<Vec<u8>> = texts.iter().map(|t| t.as_bytes().to_vec()).collect();
    assert_eq!(stored, expected);

    projector.stop().await;
    api.stop().await;
    database.drop_database().await;
}
