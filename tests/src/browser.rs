//! A real browser for the web page tests: Debian's headless Chromium,
//! driven through `chromedriver` (WebDriver) with `fantoccini`.
//!
//! `./deploy/local test` installs both (packages `chromium` and
//! `chromium-driver`, and CJK fonts so the screenshots show the Chinese
//! text). `SCORES_CHROMEDRIVER` and `SCORES_CHROMIUM` point elsewhere; a
//! missing one fails the test saying so.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::processes::{free_port, wait_for_port};

/// The phone-sized window the pages are tested (and photographed) in.
pub const WINDOW: (u32, u32) = (430, 1300);

fn program(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} not found ({variable}); ./deploy/local test installs Debian's chromium and chromium-driver",
        path.display()
    );
    path
}

/// A `chromedriver` process on a free port, killed when dropped.
pub struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    /// Starts chromedriver and waits until it listens.
    ///
    /// # Panics
    ///
    /// When chromedriver is not installed or does not start.
    pub fn start() -> Self {
        let binary = program("SCORES_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", binary.display()));
        wait_for_port(port, Duration::from_secs(20), "chromedriver");
        Self { child, port }
    }

    /// A new headless Chromium session with a phone-sized window.
    ///
    /// # Panics
    ///
    /// When Chromium is not installed or the session cannot start.
    pub async fn session(&self) -> Client {
        let chromium = program("SCORES_CHROMIUM", "/usr/bin/chromium");
        let (width, height) = WINDOW;
        let options = json!({
            "binary": chromium,
            // The machine has no network beyond loopback: without these,
            // Chromium keeps trying to reach Google's services.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--lang=zh-TW",
                format!("--window-size={width},{height}"),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".to_owned(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|error| panic!("starting a Chromium session: {error}"))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where screenshots go: `SCORES_SCREENSHOT_DIR` (`./deploy/local
/// screenshots` sets it to `docs/screenshots`), else a directory under the
/// system's temporary one.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("SCORES_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("score-pipeline-screenshots"))
}

/// Saves a PNG of what the browser shows as `name` in [`screenshot_dir`].
///
/// # Panics
///
/// When the browser or the file system refuses.
pub async fn save_screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.expect("a screenshot");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("creating the screenshot directory");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("writing the screenshot");
    path
}
