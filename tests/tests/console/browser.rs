//! A headless Chromium driven over the DevTools protocol, for the console's browser tests: one
//! page, navigated, read with `Runtime.evaluate` (in the page, or in one of its frames that runs
//! in a process of its own) and photographed with `Page.captureScreenshot`, and the console's
//! sign-in.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running headless Chromium with one page open.
pub(crate) struct Browser {
    child: Child,
    runtime: tokio::runtime::Runtime,
    socket: Socket,
    /// The session `eval` and friends talk to: the page's, or a frame's.
    session: String,
    /// The page's session.
    page: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts `binary` headless with a fresh profile and opens a blank page.
    pub(crate) fn launch(binary: &str) -> Self {
        let profile = tempfile::tempdir().expect("browser profile");
        let mut child = Command::new(binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1400,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("Chromium printed its DevTools address within 30 s");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let socket = runtime
            .block_on(tokio_tungstenite::connect_async(url.as_str()))
            .expect("DevTools connection")
            .0;
        let mut browser = Self {
            child,
            runtime,
            socket,
            session: String::new(),
            page: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().expect("target id").to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        browser.page.clone_from(&browser.session);
        browser
    }

    /// Makes `eval` and `wait_until` talk to the page's frame whose
    /// address contains `url_part` (a cross-origin frame, which Chromium runs as a target of its
    /// own), waiting up to 30 s for it.
    pub(crate) fn enter_frame(&mut self, url_part: &str) {
        let target = claw_tests::eventually(Duration::from_secs(30), "the frame's target", || {
            let targets = self.browser_call("Target.getTargets", json!({}));
            targets["targetInfos"].as_array()?.iter().find_map(|t| {
                (t["type"] == "iframe" && t["url"].as_str()?.contains(url_part))
                    .then(|| t["targetId"].as_str().map(str::to_owned))
                    .flatten()
            })
        });
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        self.session = attached["sessionId"]
            .as_str()
            .expect("frame session id")
            .to_owned();
    }

    /// Makes `eval` and friends talk to the page again.
    pub(crate) fn leave_frame(&mut self) {
        self.session.clone_from(&self.page);
    }

    /// A DevTools command to the browser itself, not to the page.
    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        let session = std::mem::take(&mut self.session);
        let answer = self.call(method, params);
        self.session = session;
        answer
    }

    /// Sends one DevTools command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let socket = &mut self.socket;
        self.runtime.block_on(async {
            socket
                .send(Message::text(message.to_string()))
                .await
                .expect("DevTools send");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let next = tokio::time::timeout_at(deadline, socket.next())
                    .await
                    .unwrap_or_else(|_| panic!("{method}: no answer within 30 s"));
                let Some(Ok(Message::Text(text))) = next else {
                    continue;
                };
                let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if answer["id"] == id {
                    if let Some(error) = answer.get("error") {
                        panic!("{method}: {error}");
                    }
                    return answer["result"].clone();
                }
            }
        })
    }

    /// Opens `url` in the page.
    pub(crate) fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of `expression` evaluated in the page (promises awaited).
    pub(crate) fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits up to 30 s until `expression` is true in the page (an expression that throws, as
    /// one does while the page loads, counts as not yet).
    pub(crate) fn wait_until(&mut self, what: &str, expression: &str) {
        let guarded =
            format!("(() => {{ try {{ return ({expression}); }} catch {{ return false; }} }})()");
        claw_tests::eventually(Duration::from_secs(30), what, || {
            (self.eval(&guarded) == Value::Bool(true)).then_some(())
        });
    }

    /// Signs in to the console shown with `token` (a control token or an API key), through its
    /// login form.
    pub(crate) fn sign_in(&mut self, token: &str) {
        self.eval(&format!(
            "document.getElementById('token').value = {:?}; \
             document.getElementById('login-form').requestSubmit(); true",
            token.trim()
        ));
    }

    /// Saves a PNG of the page (with its frames) to `path`.
    pub(crate) fn screenshot(&mut self, path: &Path) {
        let session = std::mem::replace(&mut self.session, self.page.clone());
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        self.session = session;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base-64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
