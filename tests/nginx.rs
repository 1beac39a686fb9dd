//! The nginx site (`deploy/nginx/scores.conf`) in front of the real ingest
//! API: HTTPS with a throwaway certificate, on test ports, everything else
//! as shipped. A submission goes through with nginx's request id, which
//! lands in the event; HTTP redirects to HTTPS; a body over 16 KiB and
//! `/metrics` stop at nginx; the access log holds no phone number.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pipeline_tests::processes::{free_port, wait_for_port};
use pipeline_tests::{RunningApi, TestTopic, legacy_form_body};
use serde_json::Value;

const SITE: &str = include_str!("../deploy/nginx/scores.conf");

/// nginx serving the site, killed when dropped.
struct Nginx {
    child: Child,
    dir: PathBuf,
    https_port: u16,
    http_port: u16,
}

impl Nginx {
    /// The shipped site, with its certificate, log directory and listen
    /// ports moved into a scratch directory, proxying to `api`.
    fn start(api: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("logs")).expect("a scratch directory");
        std::fs::create_dir_all(dir.join("scores")).expect("a scratch directory");
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=scores.example.com"])
            .arg("-keyout")
            .arg(dir.join("privkey.pem"))
            .arg("-out")
            .arg(dir.join("fullchain.pem"))
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (./deploy/local test installs it)");
        assert!(made.success(), "openssl made a certificate");
        let (https_port, http_port) = (free_port(), free_port());
        let at = |path: &str| dir.join(path).display().to_string();
        let site = SITE
            .replace("/etc/letsencrypt/live/scores.example.com", &at(""))
            .replace("/var/log/nginx/", &at("logs/"))
            .replace(
                "listen 443 ssl http2;",
                &format!("listen 127.0.0.1:{https_port} ssl http2;"),
            )
            .replace("listen [::]:443 ssl http2;", "")
            .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
            .replace("listen [::]:80;", "");
        assert!(
            site.contains(&format!("127.0.0.1:{https_port}")),
            "the site still listens on 443 as shipped"
        );
        std::fs::write(dir.join("site.conf"), site).expect("writing the site");
        std::fs::write(
            dir.join("scores/upstream.conf"),
            format!("upstream scores_ingest_api {{ server {api}; keepalive 8; }}\n"),
        )
        .expect("writing the upstream");
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "pid {pid};\nerror_log {error};\nevents {{}}\nhttp {{\n  include {site};\n}}\n",
                pid = at("nginx.pid"),
                error = at("logs/error.log"),
                site = at("site.conf"),
            ),
        )
        .expect("writing nginx.conf");
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("nginx is installed (./deploy/local test installs nginx-light)");
        let child = Command::new(binary)
            .arg("-p")
            .arg(format!("{}/", dir.display()))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        wait_for_port(https_port, Duration::from_secs(20), "nginx");
        Self {
            child,
            dir,
            https_port,
            http_port,
        }
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/scores.access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What curl saw: status, response headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A request with curl, to the site's name resolved to loopback.
async fn curl(port: u16, scheme: &str, path: &str, extra: &[&str]) -> Answer {
    let mut args: Vec<String> = [
        "-sk",
        "--http1.1",
        "-D",
        "-",
        "--max-time",
        "20",
        "--resolve",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push(format!("scores.example.com:{port}:127.0.0.1"));
    args.extend(extra.iter().map(ToString::to_string));
    args.push(format!("{scheme}://scores.example.com:{port}{path}"));
    let output = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output())
        .await
        .expect("the curl task")
        .expect("curl runs");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn the_nginx_site_proxies_submissions_bounds_bodies_and_logs_no_phone_numbers() {
    let topic = TestTopic::create(1).await;
    let api = RunningApi::start(&topic.kafka).await;
    let nginx = Nginx::start(api.address);
    let form = ["-H", "content-type: application/x-www-form-urlencoded"];

    // The mini-program's request, over HTTPS.
    let body = legacy_form_body("13800138000", ["5", "4", "3"], ["很好", "", ""]);
    let mut args = form.to_vec();
    args.extend(["--data", body.as_str()]);
    let answer = curl(nginx.https_port, "https", "/score", &args).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, "\"數據提交成功\"");
    let request_id = answer
        .header("x-request-id")
        .expect("nginx's request id is answered")
        .to_owned();
    assert_eq!(request_id.len(), 32, "nginx's $request_id: {request_id}");
    assert!(answer.header("strict-transport-security").is_some());
    let payloads = topic.payloads().await;
    assert_eq!(payloads.len(), 1);
    let event: Value = serde_json::from_slice(&payloads[0]).expect("a JSON event");
    assert_eq!(
        event["request_id"],
        request_id.as_str(),
        "the event carries it"
    );

    // Plain HTTP is redirected.
    let redirect = curl(nginx.http_port, "http", "/score", &[]).await;
    assert_eq!(redirect.status, 301);
    assert!(
        redirect
            .header("location")
            .is_some_and(|location| location.starts_with("https://")),
        "{:?}",
        redirect.headers
    );

    // A body over 16 KiB never reaches the API.
    let large = format!("{body}&txt3={}", "x".repeat(17 * 1024));
    let mut args = form.to_vec();
    args.extend(["--data", large.as_str()]);
    let refused = curl(nginx.https_port, "https", "/score", &args).await;
    assert_eq!(refused.status, 413);
    assert_eq!(topic.record_count().await, 1, "nothing more was appended");

    // Metrics are for Prometheus on the API's own address.
    let hidden = curl(nginx.https_port, "https", "/metrics", &[]).await;
    assert_eq!(hidden.status, 404);

    // Reads name the phone number in the URL; the log does not.
    for path in [
        "/graderesult?phoneNum=13800138000",
        "/v1/accounts/13800138000/scores?limit=5",
    ] {
        curl(nginx.https_port, "https", path, &[]).await;
    }
    let log = nginx.access_log();
    assert!(log.contains("\"POST /score\" 200"), "{log}");
    assert!(log.contains("\"GET /graderesult\""), "{log}");
    assert!(
        log.contains("\"GET /v1/accounts/{acc_nbr}/scores\""),
        "{log}"
    );
    assert!(log.contains(&format!("request_id={request_id}")), "{log}");
    assert!(
        !log.contains("13800138000"),
        "no phone number in the access log:\n{log}"
    );

    drop(nginx);
    api.stop().await;
}
