//! The real binaries as separate processes, for tests that kill them:
//! private Apache Kafka nodes (one, or a three-node cluster), a private
//! MariaDB server, `ingest-api` and
//! `projector run`, and a load generator that records every acknowledgment.
//!
//! Binaries come from `SCORES_TEST_BIN_DIR` (set by `./deploy/local test`,
//! which builds them), or from the target directory this test runs from;
//! the Kafka jars from `SCORES_KAFKA_LIBS` or the `deploy/local` cache. A
//! missing binary fails the test with a message saying how to get it.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until something accepts connections on `port`.
///
/// # Panics
///
/// When nothing does within `limit`.
pub fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// Where the workspace's binaries are.
pub fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("SCORES_TEST_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<test binary>
            let exe = std::env::current_exe().expect("the test binary's path");
            exe.parent()
                .and_then(Path::parent)
                .expect("a target directory")
                .to_path_buf()
        });
    for binary in ["ingest-api", "projector"] {
        assert!(
            dir.join(binary).is_file(),
            "{binary} is not built in {}; run ./deploy/local test, or cargo build --bins first",
            dir.display()
        );
    }
    dir
}

/// Sends `signal` to `child`.
fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) with a pid we spawned and still own.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits for `child` to exit, at most `limit`.
fn wait_with_limit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Apache Kafka version `deploy/kafka/pom.xml` pins.
pub fn kafka_version() -> &'static str {
    include_str!("../../deploy/kafka/pom.xml")
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("deploy/kafka/pom.xml names <kafka.version>")
}

/// The directory of the Kafka jars: `SCORES_KAFKA_LIBS` (set by
/// `./deploy/local test`), else the `deploy/local` cache for the version
/// `deploy/kafka/pom.xml` pins.
pub fn kafka_libs() -> PathBuf {
    let libs = std::env::var_os("SCORES_KAFKA_LIBS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let version = kafka_version();
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache")
                });
            cache.join(format!("score-pipeline/kafka-{version}/libs"))
        });
    assert!(
        libs.join(".complete").is_file(),
        "the Kafka jars are not in {}; ./deploy/local test fetches them (or set SCORES_KAFKA_LIBS)",
        libs.display()
    );
    libs
}

/// `deploy/kafka/node`, the script that runs one Kafka node for
/// `deploy/local` too.
fn kafka_node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/node")
}

/// One Apache Kafka node (broker and controller in one JVM) of a
/// [`KafkaCluster`], with its storage in a scratch directory that survives
/// restarts.
pub struct KafkaNode {
    /// Kafka's node id (an `i32`, as its metadata reports leaders).
    pub node_id: i32,
    pub port: u16,
    controller_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// How many times the log said the server started, before the current
    /// start.
    starts_before: usize,
}

impl KafkaNode {
    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    fn started_count(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .matches("Kafka Server started")
            .count()
    }

    fn spawn(&mut self, voters: &str, cluster_id: &str, replication: usize) {
        self.starts_before = self.started_count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the broker's log");
        let child = Command::new(kafka_node_script())
            .env("SCORES_KAFKA_LIBS", kafka_libs())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--node-id", &self.node_id.to_string()])
            .args(["--port", &self.port.to_string()])
            .args(["--controller-port", &self.controller_port.to_string()])
            .args(["--voters", voters, "--cluster-id", cluster_id])
            .args(["--replication", &replication.to_string()])
            .args(["--heap", "512m"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting deploy/kafka/node");
        self.child = Some(child);
    }

    /// Waits until the node logged that it started (it then serves
    /// clients).
    ///
    /// # Panics
    ///
    /// When it has not within `limit`, or exited.
    fn wait_until_started(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.started_count() <= self.starts_before {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
            assert!(
                !exited && Instant::now() < deadline,
                "Kafka node {} did not start within {limit:?}; its log:\n{}",
                self.node_id,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines the node logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the node's process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL (a crash: nothing flushed), and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a controlled shutdown: leadership moves away first), and
    /// waits up to `limit` for it to exit before killing it.
    pub fn terminate(&mut self, limit: Duration) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_with_limit(&mut child, limit).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A KRaft cluster of `size` combined nodes on loopback, each on free ports,
/// started together (none finishes starting without a controller majority).
/// Topics get `size` replicas with `min.insync.replicas` one less, so a
/// three-node cluster keeps acknowledging with one node down.
pub struct KafkaCluster {
    pub nodes: Vec<KafkaNode>,
    voters: String,
    cluster_id: String,
}

impl KafkaCluster {
    /// Starts the cluster and waits until every node serves.
    ///
    /// # Panics
    ///
    /// When a node does not start within 90 s.
    pub fn start(size: usize) -> Self {
        let cluster_id = {
            // A KRaft cluster id is 16 bytes in unpadded base64url; any value
            // works as long as every node shares it.
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
        };
        let count = i32::try_from(size).expect("a cluster size");
        let nodes: Vec<KafkaNode> = (1..=count)
            .map(|node_id| KafkaNode {
                node_id,
                port: free_port(),
                controller_port: free_port(),
                dir: scratch_dir(&format!("kafka-{node_id}")),
                child: None,
                starts_before: 0,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|node| format!("{}@127.0.0.1:{}", node.node_id, node.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            nodes,
            voters,
            cluster_id,
        };
        for index in 0..size {
            cluster.spawn(index);
        }
        for node in &mut cluster.nodes {
            node.wait_until_started(Duration::from_secs(90));
        }
        cluster
    }

    fn spawn(&mut self, index: usize) {
        let replication = self.nodes.len();
        let (voters, cluster_id) = (self.voters.clone(), self.cluster_id.clone());
        self.nodes[index].spawn(&voters, &cluster_id, replication);
    }

    /// Every node's address, comma-separated: the bootstrap list.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(KafkaNode::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    fn index_of(&self, node_id: i32) -> usize {
        self.nodes
            .iter()
            .position(|node| node.node_id == node_id)
            .unwrap_or_else(|| panic!("no Kafka node {node_id} in this cluster"))
    }

    /// The node with `node_id`.
    pub fn node(&mut self, node_id: i32) -> &mut KafkaNode {
        let index = self.index_of(node_id);
        &mut self.nodes[index]
    }

    /// Starts the node with `node_id` again on its ports and storage, and
    /// waits until it serves.
    pub fn restart(&mut self, node_id: i32) {
        let index = self.index_of(node_id);
        self.spawn(index);
        self.nodes[index].wait_until_started(Duration::from_secs(90));
    }

    /// The node that most recently logged becoming the active controller
    /// (log lines start with their time, so the latest sorts last).
    pub fn active_controller(&self) -> Option<i32> {
        self.nodes
            .iter()
            .filter_map(|node| {
                let log = std::fs::read_to_string(node.log_path()).ok()?;
                let line = log
                    .lines()
                    .rfind(|line| line.contains("Becoming the active controller"))?
                    .to_owned();
                Some((line, node.node_id))
            })
            .max()
            .map(|(_, node_id)| node_id)
    }

    /// The last lines every node logged, for failure messages.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- Kafka node {} ---\n{}", node.node_id, node.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

/// A single Kafka node of the test's own: a [`KafkaCluster`] of one.
pub struct Broker {
    cluster: KafkaCluster,
}

impl Broker {
    /// Starts a broker on free ports.
    pub fn start() -> Self {
        Self {
            cluster: KafkaCluster::start(1),
        }
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        self.cluster.bootstrap()
    }

    /// Starts it again on the same ports and storage.
    pub fn restart(&mut self) {
        self.cluster.restart(1);
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        self.cluster.node(1).kill();
    }
}

/// A MariaDB server of the test's own, on a free port, with a scratch data
/// directory: a test may stop it without disturbing the others.
pub struct PrivateMariaDb {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateMariaDb {
    /// Initializes a data directory and starts the server.
    pub fn start() -> Self {
        let dir = scratch_dir("mariadb");
        let status = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mariadb-install-db (from mariadb-server) must be installed");
        assert!(status.success(), "mariadb-install-db failed");
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    /// `mysql://root@127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same data.
    pub fn restart(&mut self) {
        let log = self.dir.join("mariadb.log");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!(
                "--socket={}",
                self.dir.join("mariadb.sock").display()
            ))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mariadb.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .args(["--user=root", "--bind-address=127.0.0.1"])
            .arg(format!("--port={}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd must be installed");
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(60), "MariaDB");
    }

    /// Shuts it down (SIGTERM, as an operator or a crash-restarting
    /// supervisor would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_with_limit(&mut child, Duration::from_secs(30)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `ingest-api` or `projector` process.
pub struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `ingest-api` with `env` on a free port and waits until it
    /// answers `/healthz`. Returns it and its base URL.
    pub fn ingest_api<K: AsRef<str>>(env: &[(K, String)]) -> (Self, String) {
        Self::ingest_api_on(free_port(), env)
    }

    /// Starts `ingest-api` with `env` on `port` (to start one again where
    /// its clients expect it) and waits until it listens.
    pub fn ingest_api_on<K: AsRef<str>>(port: u16, env: &[(K, String)]) -> (Self, String) {
        let mut env: Vec<(&str, String)> = env
            .iter()
            .map(|(key, value)| (key.as_ref(), value.clone()))
            .collect();
        env.push(("SCORES_HTTP_ADDR", format!("127.0.0.1:{port}")));
        // The API does not start without a results token key: the tests'
        // own unless the test gives one, and no limit of refused reads
        // unless the test sets one.
        for (name, value) in [
            (
                "SCORES_RESULTS_TOKEN_KEYS",
                crate::TEST_RESULTS_TOKEN_KEYS.to_owned(),
            ),
            (
                "SCORES_RATE_LIMIT_REFUSED_READS_PER_CLIENT_PER_MINUTE",
                "0".to_owned(),
            ),
        ] {
            let given = |key: &str| key == name || key == format!("{name}_FILE");
            if !env.iter().any(|(key, _)| given(key)) {
                env.push((name, value));
            }
        }
        let service = Self::spawn("ingest-api", &[], &env);
        wait_for_port(port, Duration::from_secs(30), "ingest-api");
        (service, format!("http://127.0.0.1:{port}"))
    }

    /// Starts `projector run` with `env`.
    pub fn projector<K: AsRef<str>>(env: &[(K, String)]) -> Self {
        Self::spawn("projector", &["run"], env)
    }

    /// Starts another `projector` command (`rebuild grade`, say) with `env`.
    pub fn projector_command<K: AsRef<str>>(args: &[&str], env: &[(K, String)]) -> Self {
        Self::spawn("projector", args, env)
    }

    /// `env` with the personal data settings every service needs, where the
    /// test gives none: the tests' pepper ([`crate::TEST_ACCOUNT_PEPPER`]),
    /// and, when the test names the event topic, its key topic
    /// ([`crate::keys_topic_of`]), so that an API and a projector started
    /// with the same settings share their data keys.
    fn with_personal_data<'a>(env: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
        let set = |name: &str| env.iter().any(|(key, _)| *key == name);
        let mut with = env.to_vec();
        if !set("SCORES_ACCOUNT_PEPPER") && !set("SCORES_ACCOUNT_PEPPER_FILE") {
            with.push((
                "SCORES_ACCOUNT_PEPPER",
                crate::TEST_ACCOUNT_PEPPER.to_owned(),
            ));
        }
        let topic = env.iter().rev().find(|(key, _)| *key == "SCORES_TOPIC");
        if let Some((_, topic)) = topic
            && !set("SCORES_KEYS_TOPIC")
        {
            with.push(("SCORES_KEYS_TOPIC", crate::keys_topic_of(topic)));
        }
        with
    }

    fn spawn<K: AsRef<str>>(name: &'static str, args: &[&str], env: &[(K, String)]) -> Self {
        let env: Vec<(&str, String)> = env
            .iter()
            .map(|(key, value)| (key.as_ref(), value.clone()))
            .collect();
        let env = Self::with_personal_data(&env);
        let log = scratch_dir(name).join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(bin_dir().join(name));
        // Only the settings the test gives: none inherited from the shell
        // (./deploy/local exports the stack's own).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SCORES_") {
                command.env_remove(key);
            }
        }
        let child = command
            .args(args)
            .env("SCORES_LOG_FORMAT", "text")
            // Several projectors may run at once: each serves its metrics
            // on a port of its own unless the test says otherwise.
            .env("SCORES_METRICS_ADDR", "127.0.0.1:0")
            .env(
                "RUST_LOG",
                std::env::var("SERVICE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name,
            child: Some(child),
            log,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The most resident memory the process has used so far, in KiB (Linux
    /// `VmHWM`); `None` once it has exited or off Linux.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmHWM:")
    }

    /// The resident memory of the process now, in KiB (Linux `VmRSS`);
    /// `None` once it has exited or off Linux.
    pub fn rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmRSS:")
    }

    /// A size line (`field`, with its colon) of `/proc/<pid>/status`, in KiB.
    fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Waits for the process to exit on its own, at most `limit`; the exit
    /// status, or `None` if it is still running.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_with_limit(self.child.as_mut()?, limit);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// SIGKILL: no cleanup of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status if it exits within `limit`.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal(&child, libc::SIGTERM);
        let status = wait_with_limit(&mut child, limit);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Waits until a projector logged that the group gave it partitions (it
    /// logs assignments at `info` for `projector::runner`).
    ///
    /// # Panics
    ///
    /// When it has not within `limit`.
    pub async fn wait_for_partitions(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let assigned_some = |line: &str| {
            line.contains("partitions assigned")
                && line
                    .split("partitions=[")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        };
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.lines().any(assigned_some) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} was given no partitions within {limit:?}\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process logged.
    pub fn log_tail_all(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines the process logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- {} log ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A small, seedable pseudo-random sequence (xorshift64*), so that load and
/// kill points can be replayed from the seed a failing test prints.
pub struct Seeded(u64);

impl Seeded {
    /// From `SCORES_TEST_SEED` when set, else from the clock; prints the seed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("SCORES_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (replay with SCORES_TEST_SEED={seed})");
        Self(seed.max(1))
    }

    /// The next number in `range`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let value = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        low + value % (high - low).max(1)
    }
}

/// What a load generator saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Event ids of every 2xx.
    pub acknowledged: HashSet<String>,
    /// Status codes of every answer that was not a 2xx.
    pub refused: Vec<u16>,
    /// Requests that got no complete HTTP answer (refused or reset).
    pub unanswered: usize,
    /// Every request in the order its answer came.
    pub answers: Vec<Answer>,
}

/// One request of a [`Load`]: when it was sent and answered, and how.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub sent: Instant,
    pub answered: Instant,
    /// The HTTP status; `None` when no complete answer came.
    pub status: Option<u16>,
    /// Where a 2xx's event landed.
    pub partition: Option<i32>,
}

enum Outcome {
    Acknowledged(String, i32),
    Refused(u16),
    Unanswered,
}

/// Sends submissions to `/v1/scores` of the given APIs, `concurrency` at a
/// time, round robin, until stopped or `limit` requests were made.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    report: Arc<Mutex<LoadReport>>,
}

impl Load {
    /// Starts the load; accounts and grades come from `seed`.
    pub fn start(apis: Vec<String>, concurrency: usize, limit: usize, seed: u64) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let report: Arc<Mutex<LoadReport>> = Arc::default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..concurrency)
            .map(|worker| {
                let (stop, report, client, apis, next) = (
                    stop.clone(),
                    report.clone(),
                    client.clone(),
                    apis.clone(),
                    next.clone(),
                );
                async move {
                    let mut random = Seeded(seed.wrapping_add(worker as u64 + 1).max(1));
                    while !stop.is_cancelled() {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if n >= limit {
                            break;
                        }
                        let body = serde_json::json!({
                            "acc_nbr": format!("1{:010}", random.between(0, 10_000_000_000)),
                            "grade1": random.between(1, 6), "grade2": 3, "grade3": 4,
                            "txt1": format!("load {n}")
                        });
                        let url = format!("{}/v1/scores", apis[n % apis.len()]);
                        let sent = Instant::now();
                        let outcome = match client.post(url).json(&body).send().await {
                            Ok(response) if response.status().is_success() => {
                                match response.json::<serde_json::Value>().await {
                                    Ok(value) => Outcome::Acknowledged(
                                        value["event_id"].as_str().expect("an event id").to_owned(),
                                        value["partition"]
                                            .as_i64()
                                            .and_then(|p| i32::try_from(p).ok())
                                            .expect("a partition"),
                                    ),
                                    Err(_) => Outcome::Unanswered,
                                }
                            }
                            Ok(response) => Outcome::Refused(response.status().as_u16()),
                            Err(_) => Outcome::Unanswered,
                        };
                        let mut answer = Answer {
                            sent,
                            answered: Instant::now(),
                            status: None,
                            partition: None,
                        };
                        {
                            let mut report = report.lock().expect("report");
                            match outcome {
                                Outcome::Acknowledged(id, partition) => {
                                    report.acknowledged.insert(id);
                                    answer.status = Some(202);
                                    answer.partition = Some(partition);
                                }
                                Outcome::Refused(status) => {
                                    report.refused.push(status);
                                    answer.status = Some(status);
                                }
                                Outcome::Unanswered => report.unanswered += 1,
                            }
                            report.answers.push(answer);
                        }
                        if matches!(n % 8, 0) {
                            // Pace the load a little so that it spans the
                            // faults instead of finishing before them.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            })
            .collect();
        let task = tokio::spawn(async move {
            futures::future::join_all(workers).await;
        });
        Self { stop, task, report }
    }

    /// Acknowledgments so far.
    pub fn acknowledged(&self) -> usize {
        self.report.lock().expect("report").acknowledged.len()
    }

    /// Answers that were not a 2xx so far, by status.
    pub fn refused(&self) -> Vec<u16> {
        self.report.lock().expect("report").refused.clone()
    }

    /// Every answer so far.
    pub fn answers(&self) -> Vec<Answer> {
        self.report.lock().expect("report").answers.clone()
    }

    /// Waits until at least `count` acknowledgments more than now.
    pub async fn wait_for_more(&self, count: usize, limit: Duration) {
        let target = self.acknowledged() + count;
        let deadline = tokio::time::Instant::now() + limit;
        while self.acknowledged() < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "load made {} of {target} acknowledgments within {limit:?}",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops sending, waits for the requests in flight, and reports.
    pub async fn finish(self) -> LoadReport {
        self.stop.cancel();
        let _ = self.task.await;
        std::mem::take(&mut *self.report.lock().expect("report"))
    }

    /// Waits until the load has sent everything it was asked to, then
    /// reports.
    pub async fn complete(self) -> LoadReport {
        let _ = self.task.await;
        std::mem::take(&mut *self.report.lock().expect("report"))
    }
}
