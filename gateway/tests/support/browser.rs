//! A small headless-Chromium driver for end-to-end tests, speaking the Chrome DevTools
//! Protocol over the browser's websocket.
//!
//! One [`Browser`] is one Chromium process with its own temporary profile. Every
//! [`Browser::new_page`] opens a page in a fresh browser context (its own cookies and storage),
//! attached with `flatten: true`, so all pages share the browser websocket and are told apart
//! by `sessionId`. One task reads the websocket and routes responses by `id` to the waiting
//! command and events by `sessionId` to the page they belong to; one task writes.
//!
//! Every command gives up after 20 s, and every failure panics with the CDP method and the
//! reason: this is test code.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods
)]

use std::collections::{HashMap, VecDeque};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one CDP command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `wait_for` (and the waits inside `goto`, `click`, ...) poll.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long Chromium may take to start listening.
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);
pub const VIEWPORT: (u32, u32) = (1200, 900);
/// Events kept per page for [`Page::events`] (oldest dropped first).
const RECENT_EVENTS: usize = 2000;

type Reply = Result<Value, String>;

/// The websocket to the browser, shared by the browser and its pages.
struct Conn {
    out: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    state: Mutex<ConnState>,
    /// Chromium's stdout and stderr, for diagnostics.
    log: PathBuf,
}

#[derive(Default)]
struct ConnState {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    /// Per session; created by whichever comes first, the page or its first event.
    sessions: HashMap<String, Arc<Mutex<SessionLog>>>,
    /// Why the connection is gone, once it is.
    closed: Option<String>,
}

#[derive(Default)]
struct SessionLog {
    errors: Vec<String>,
    recent: VecDeque<Value>,
}

impl Conn {
    fn session_log(&self, session: &str) -> Arc<Mutex<SessionLog>> {
        self.state
            .lock()
            .unwrap()
            .sessions
            .entry(session.to_owned())
            .or_default()
            .clone()
    }

    fn message(&self, session: Option<&str>, method: &str, params: Value) -> (u64, Message) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            msg["sessionId"] = Value::from(session);
        }
        (id, Message::text(msg.to_string()))
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Reply {
        let (id, msg) = self.message(session, method, params);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap();
            if let Some(why) = &state.closed {
                return Err(format!("CDP {method}: browser connection closed ({why})"));
            }
            state.pending.insert(id, tx);
        }
        if self.out.send(msg).is_err() {
            self.state.lock().unwrap().pending.remove(&id);
            return Err(format!(
                "CDP {method}: browser connection closed (writer gone)"
            ));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Err(_) => {
                self.state.lock().unwrap().pending.remove(&id);
                Err(format!(
                    "CDP {method}: no answer within {} s",
                    COMMAND_TIMEOUT.as_secs()
                ))
            }
            Ok(Err(_)) => {
                let why = self
                    .state
                    .lock()
                    .unwrap()
                    .closed
                    .clone()
                    .unwrap_or_default();
                Err(format!("CDP {method}: browser connection closed ({why})"))
            }
            Ok(Ok(reply)) => reply.map_err(|e| format!("CDP {method} failed: {e}")),
        }
    }

    /// Sends without waiting for (or routing) the answer.
    fn send_and_forget(&self, session: Option<&str>, method: &str, params: Value) {
        let (_, msg) = self.message(session, method, params);
        let _ = self.out.send(msg);
    }

    fn dispatch(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            let tx = self.state.lock().unwrap().pending.remove(&id);
            if let Some(tx) = tx {
                let reply = match msg.get("error") {
                    Some(e) => Err(cdp_error(e)),
                    None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
                };
                let _ = tx.send(reply);
            }
            return;
        }
        let (Some(method), Some(session)) = (
            msg.get("method").and_then(Value::as_str),
            msg.get("sessionId").and_then(Value::as_str),
        ) else {
            return; // browser-level events: nothing listens to them
        };
        let log = self.session_log(session);
        let mut log = log.lock().unwrap();
        let params = msg.get("params").unwrap_or(&Value::Null);
        if let Some(error) = error_of_event(method, params) {
            log.errors.push(error);
        }
        if log.recent.len() == RECENT_EVENTS {
            log.recent.pop_front();
        }
        log.recent.push_back(msg);
    }

    /// Fails every waiting and future command with `why`.
    fn close(&self, why: String) {
        let mut state = self.state.lock().unwrap();
        if state.closed.is_none() {
            state.closed = Some(why);
        }
        state.pending.clear(); // dropping the senders wakes the waiters
    }
}

fn cdp_error(e: &Value) -> String {
    let mut s = e
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| e.to_string(), str::to_owned);
    if let Some(code) = e.get("code") {
        s.push_str(&format!(" (code {code})"));
    }
    if let Some(data) = e.get("data").and_then(Value::as_str) {
        s.push_str(&format!(": {data}"));
    }
    s
}

/// The error an event reports, if it is one: an uncaught exception, a `console.error`, or an
/// error-level browser log entry (CSP violations, failed loads, ...).
fn error_of_event(method: &str, params: &Value) -> Option<String> {
    match method {
        "Runtime.exceptionThrown" => Some(format!(
            "exception: {}",
            exception_message(&params["exceptionDetails"])
        )),
        "Runtime.consoleAPICalled" if params["type"] == "error" || params["type"] == "assert" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(remote_object_text)
                .collect();
            Some(format!(
                "console.{}: {}",
                params["type"].as_str().unwrap_or_default(),
                args.join(" ")
            ))
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => {
            let entry = &params["entry"];
            // The browser fetches /favicon.ico on its own, some time after the load: a missing
            // one is no error of the page, and reporting it would make tests flaky.
            if entry["source"] == "network"
                && entry["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("/favicon.ico"))
            {
                return None;
            }
            let mut s = format!(
                "log ({}): {}",
                entry["source"].as_str().unwrap_or("?"),
                entry["text"].as_str().unwrap_or_default()
            );
            if let Some(url) = entry["url"].as_str().filter(|u| !u.is_empty()) {
                s.push_str(&format!(" [{url}]"));
            }
            Some(s)
        }
        _ => None,
    }
}

fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => o
            .get("description")
            .or_else(|| o.get("unserializableValue"))
            .or_else(|| o.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }
}

fn exception_message(details: &Value) -> String {
    let text = details["text"].as_str().unwrap_or("exception");
    match details["exception"]["description"].as_str() {
        Some(description) => format!("{text} {description}"),
        None => match details["exception"].get("value") {
            Some(v) => format!("{text} {v}"),
            None => text.to_owned(),
        },
    }
}

/// The Chromium process, killed (the whole process group) and reaped on drop. (Its two
/// crashpad handlers leave the group, but exit on their own once the browser is gone; do not
/// pass `--disable-crashpad-for-testing`: Chromium 156's network service then crashes and every
/// navigation fails with net::ERR_ABORTED.)
struct Process {
    child: std::process::Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

/// The last 30 lines of Chromium's output, without its D-Bus complaints (there is no bus in a
/// container; harmless).
fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(":ERROR:dbus/") && !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        // The group holds the zygote and renderers too; then make sure of the browser itself.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium. Dropping it kills the process. Its reader and writer tasks run on the
/// runtime that launched it: use one `Browser` per test (per `#[tokio::test]` runtime).
pub struct Browser {
    conn: Arc<Conn>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    process: Process,
    pub ws_url: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.conn.close("the Browser was dropped".to_owned());
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The Chromium binary: `$CHROMIUM`, `/usr/bin/chromium`, or `chromium` on `PATH`.
pub fn chromium_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "$CHROMIUM is set to {}, which is not a file",
            path.display()
        );
        return Some(path);
    }
    let default = PathBuf::from("/usr/bin/chromium");
    if default.is_file() {
        return Some(default);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("chromium"))
        .find(|p| p.is_file())
}

const FLAGS: &[&str] = &[
    "--headless=new",
    // We run as root (and in containers without user namespaces): the sandbox cannot start.
    "--no-sandbox",
    "--disable-gpu",
    // Docker's /dev/shm is 64 MB; renderers crash when it runs out. Use /tmp instead.
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--metrics-recording-only",
    "--password-store=basic",
    "--mute-audio",
    "--hide-scrollbars",
    // Tests only talk to 127.0.0.1; never let an environment proxy get in the way.
    "--no-proxy-server",
    "--window-size=1200,900",
    "--remote-debugging-port=0",
];

impl Browser {
    /// Starts headless Chromium. Panics when it is not installed.
    pub async fn launch() -> Browser {
        let exe = chromium_binary().unwrap_or_else(|| {
            panic!(
                "Chromium not found (looked at $CHROMIUM, /usr/bin/chromium and `chromium` on \
                 PATH): install Debian's chromium: apt-get install chromium"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromium.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(&exe)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut process = Process {
            child,
            log,
            _dir: dir,
        };

        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let ws_url = loop {
            if let Some(url) = devtools_url(&process.log, &profile) {
                break url;
            }
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before DevTools listened; its output:\n{}",
                    exe.display(),
                    process.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print `DevTools listening on` within {} s; its output:\n{}",
                exe.display(),
                LAUNCH_TIMEOUT.as_secs(),
                process.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        let (ws, _) = tokio::time::timeout(
            COMMAND_TIMEOUT,
            tokio_tungstenite::connect_async(ws_url.as_str()),
        )
        .await
        .unwrap_or_else(|_| panic!("connecting to {ws_url} timed out"))
        .unwrap_or_else(|e| panic!("connecting to {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let conn = Arc::new(Conn {
            out,
            next_id: AtomicU64::new(1),
            log: process.log.clone(),
            state: Mutex::new(ConnState::default()),
        });

        let writer = tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let reader_conn = conn.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    None => break "the websocket ended".to_owned(),
                    Some(Err(e)) => break format!("websocket error: {e}"),
                    Some(Ok(Message::Text(text))) => reader_conn.dispatch(text.as_str()),
                    Some(Ok(Message::Close(frame))) => {
                        break format!("closed by Chromium: {frame:?}");
                    }
                    Some(Ok(_)) => {}
                }
            };
            reader_conn.close(why);
        });

        Browser {
            conn,
            tasks: vec![reader, writer],
            process,
            ws_url,
        }
    }

    /// A page in a fresh browser context (own cookies and storage), 1200x900, with the Page,
    /// Runtime and Log domains enabled.
    pub async fn new_page(&self) -> Page {
        let context = self
            .browser_call(
                "Target.createBrowserContext",
                json!({"disposeOnDetach": true}),
            )
            .await["browserContextId"]
            .as_str()
            .expect("Target.createBrowserContext: no browserContextId")
            .to_owned();
        let target = self
            .browser_call(
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context}),
            )
            .await["targetId"]
            .as_str()
            .expect("Target.createTarget: no targetId")
            .to_owned();
        let session = self
            .browser_call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await["sessionId"]
            .as_str()
            .expect("Target.attachToTarget: no sessionId")
            .to_owned();
        let page = Page {
            conn: self.conn.clone(),
            log: self.conn.session_log(&session),
            session,
            target_id: target,
            context_id: context,
        };
        page.cmd("Page.enable", json!({})).await;
        page.cmd("Runtime.enable", json!({})).await;
        page.cmd("Log.enable", json!({})).await;
        page.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page
    }

    /// A browser-level command (no session); panics on failure.
    pub async fn browser_call(&self, method: &str, params: Value) -> Value {
        self.conn
            .call(None, method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}\nChromium's output:\n{}", self.process.log_tail()))
    }

    /// The last lines Chromium printed (for diagnostics).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// The browser websocket URL: the `DevTools listening on` line of Chromium's output, or the
/// `DevToolsActivePort` file in its profile.
fn devtools_url(log: &Path, profile: &Path) -> Option<String> {
    let output = std::fs::read_to_string(log).unwrap_or_default();
    if let Some(url) = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("DevTools listening on "))
    {
        return Some(url.trim().to_owned());
    }
    let port_file = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
    let mut lines = port_file.lines();
    let port: u16 = lines.next()?.trim().parse().ok()?;
    let path = lines.next()?.trim();
    path.starts_with("/devtools/browser/")
        .then(|| format!("ws://127.0.0.1:{port}{path}"))
}

/// One page (tab) in its own browser context. Dropping it disposes of the context.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target_id: String,
    context_id: String,
    log: Arc<Mutex<SessionLog>>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.conn.send_and_forget(
            None,
            "Target.disposeBrowserContext",
            json!({"browserContextId": self.context_id}),
        );
    }
}

/// The outcome of one step of a wait: done with a value, or not yet (and why).
enum Step {
    Ready(Value),
    NotYet(String),
}

impl Page {
    /// A command on this page's session, `Err` on failure or timeout.
    pub async fn call(&self, method: &str, params: Value) -> Reply {
        self.conn.call(Some(&self.session), method, params).await
    }

    /// A command on this page's session; panics on failure or timeout.
    pub async fn cmd(&self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Navigates and waits until the new document's `readyState` is `complete`.
    pub async fn goto(&self, url: &str) {
        // Mark the current document, so the wait cannot mistake it for the new one.
        let _ = self.try_eval("document.__cdpPreviousDocument = true").await;
        let nav = self.cmd("Page.navigate", json!({"url": url})).await;
        if let Some(error) = nav.get("errorText").and_then(Value::as_str) {
            panic!(
                "navigating to {url} failed: {error}\nChromium's output:\n{}",
                log_tail(&self.conn.log)
            );
        }
        // No loaderId: a same-document navigation (fragment), the document stays.
        let predicate = if nav.get("loaderId").is_some() {
            "!document.__cdpPreviousDocument && document.readyState === 'complete'"
        } else {
            "document.readyState === 'complete'"
        };
        self.wait_for(predicate, &format!("{url} to load")).await;
    }

    /// Evaluates `js` (awaiting a promise) and returns its value; panics on an exception.
    pub async fn eval(&self, js: &str) -> Value {
        self.try_eval(js)
            .await
            .unwrap_or_else(|e| panic!("eval of `{}` failed: {e}", abbreviate(js)))
    }

    /// Evaluates `js` (awaiting a promise): its value, or the exception or CDP error.
    pub async fn try_eval(&self, js: &str) -> Reply {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": js,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(exception_message(details));
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Polls `js_predicate` every 100 ms until it is truthy (exceptions count as not yet) and
    /// returns its value; after 20 s panics naming `what`, with the page's text.
    pub async fn wait_for(&self, js_predicate: &str, what: &str) -> Value {
        self.wait_for_within(js_predicate, what, WAIT_TIMEOUT).await
    }

    /// [`Page::wait_for`] with another timeout.
    pub async fn wait_for_within(
        &self,
        js_predicate: &str,
        what: &str,
        timeout: Duration,
    ) -> Value {
        self.poll_until(what, timeout, || async move {
            match self.try_eval(js_predicate).await {
                Ok(v) if truthy(&v) => Step::Ready(v),
                Ok(v) => Step::NotYet(format!("`{}` is {v}", abbreviate(js_predicate))),
                Err(e) => Step::NotYet(format!("`{}` threw: {e}", abbreviate(js_predicate))),
            }
        })
        .await
    }

    async fn poll_until<F, Fut>(&self, what: &str, timeout: Duration, mut step: F) -> Value
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Step>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match step().await {
                Step::Ready(v) => return v,
                Step::NotYet(why) => why,
            };
            if let Some(why) = self.conn.state.lock().unwrap().closed.clone() {
                panic!(
                    "waiting for {what}: browser connection closed ({why}); last: {last}\n\
                     Chromium's output:\n{}",
                    log_tail(&self.conn.log)
                );
            }
            if Instant::now() >= deadline {
                let url = self
                    .try_eval("location.href")
                    .await
                    .unwrap_or_else(Value::from);
                let text = self
                    .try_eval("document.body ? document.body.innerText : '(no body)'")
                    .await
                    .unwrap_or_else(Value::from);
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlast: {last}\nurl: {url}\n\
                     console errors: {:?}\npage text:\n{}",
                    self.log.lock().unwrap().errors,
                    text.as_str()
                        .map_or_else(|| text.to_string(), str::to_owned)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A real mouse click in the middle of the element `selector` matches, once it exists, is
    /// visible and is not covered by another element (scrolled into view first).
    pub async fn click(&self, selector: &str) {
        let js = format!(
            r#"(() => {{
  const el = document.querySelector({sel});
  if (!el) return {{state: 'no element matches'}};
  el.scrollIntoView({{block: 'center', inline: 'center', behavior: 'instant'}});
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return {{state: 'the element has no size (hidden?)'}};
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const hit = document.elementFromPoint(x, y);
  if (!hit || !(hit === el || el.contains(hit)))
    return {{state: 'the element is covered by ' + (hit ? hit.outerHTML.slice(0, 200) : 'nothing')}};
  return {{state: 'ok', x, y}};
}})()"#,
            sel = js_string(selector)
        );
        let js = js.as_str();
        let at = self
            .poll_until(
                &format!("{selector} to be clickable"),
                WAIT_TIMEOUT,
                || async move {
                    match self.try_eval(js).await {
                        Ok(v) if v["state"] == "ok" => Step::Ready(v),
                        Ok(v) => Step::NotYet(format!("{selector}: {}", v["state"])),
                        Err(e) => Step::NotYet(format!("{selector}: {e}")),
                    }
                },
            )
            .await;
        let (x, y) = (at["x"].clone(), at["y"].clone());
        self.cmd(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y, "button": "none", "buttons": 0}),
        )
        .await;
        self.cmd(
            "Input.dispatchMouseEvent",
            json!({"type": "mousePressed", "x": x, "y": y, "button": "left", "buttons": 1,
                   "clickCount": 1}),
        )
        .await;
        self.cmd(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseReleased", "x": x, "y": y, "button": "left", "buttons": 0,
                   "clickCount": 1}),
        )
        .await;
    }

    /// Waits for `selector` and focuses it; with `caret_to_end`, moves the caret after any
    /// existing value.
    async fn focus(&self, selector: &str, caret_to_end: bool) {
        let js = format!(
            r#"(() => {{
  const el = document.querySelector({sel});
  if (!el) return 'no element matches';
  el.scrollIntoView({{block: 'center', inline: 'center', behavior: 'instant'}});
  el.focus();
  const active = document.activeElement;
  if (!active || !(active === el || el.contains(active))) return 'the element did not take focus';
  if ({caret_to_end}) {{ try {{ const n = el.value.length; el.setSelectionRange(n, n); }} catch (_) {{}} }}
  return 'ok';
}})()"#,
            sel = js_string(selector)
        );
        let js = js.as_str();
        self.poll_until(
            &format!("{selector} to take focus"),
            WAIT_TIMEOUT,
            || async move {
                match self.try_eval(js).await {
                    Ok(v) if v == "ok" => Step::Ready(v),
                    Ok(v) => Step::NotYet(format!("{selector}: {v}")),
                    Err(e) => Step::NotYet(format!("{selector}: {e}")),
                }
            },
        )
        .await;
    }

    /// Focuses `selector` and inserts `text` at the end of its value, as typing would
    /// (`beforeinput`/`input` events fire; no key events).
    pub async fn type_text(&self, selector: &str, text: &str) {
        self.focus(selector, true).await;
        self.cmd("Input.insertText", json!({"text": text})).await;
    }

    /// Focuses `selector` and presses Enter (keyDown + keyUp; submits forms, `keydown` handlers
    /// see `key === "Enter"`).
    pub async fn press_enter(&self, selector: &str) {
        self.focus(selector, false).await;
        let key = json!({
            "key": "Enter",
            "code": "Enter",
            "windowsVirtualKeyCode": 13,
            "nativeVirtualKeyCode": 13,
        });
        let mut down = key.clone();
        down["type"] = "keyDown".into();
        down["text"] = "\r".into();
        down["unmodifiedText"] = "\r".into();
        self.cmd("Input.dispatchKeyEvent", down).await;
        let mut up = key;
        up["type"] = "keyUp".into();
        self.cmd("Input.dispatchKeyEvent", up).await;
    }

    /// A PNG of the viewport, written to `path` (parent directories created).
    pub async fn screenshot(&self, path: &Path) {
        let shot = self
            .cmd("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = shot["data"]
            .as_str()
            .expect("Page.captureScreenshot: no data");
        let png = decode_base64(data).unwrap_or_else(|e| panic!("Page.captureScreenshot: {e}"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Sends these headers with every request the page makes from now on.
    pub async fn set_extra_headers(&self, headers: &[(&str, &str)]) {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.cmd("Network.enable", json!({})).await;
        self.cmd("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await;
    }

    /// Every error the page reported since it was created: uncaught exceptions,
    /// `console.error`/`console.assert`, and error-level log entries (CSP violations, failed
    /// loads; but not a missing /favicon.ico, which the browser asks for on its own). Makes a
    /// round trip first, so errors the page raised before the call are in.
    pub async fn console_errors(&self) -> Vec<String> {
        let _ = self.try_eval("0").await;
        self.log.lock().unwrap().errors.clone()
    }

    /// The most recent events of `method` (up to the last 2000 events of any kind are kept).
    pub fn events(&self, method: &str) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .recent
            .iter()
            .filter(|e| e["method"] == method)
            .map(|e| e["params"].clone())
            .collect()
    }

    pub fn session_id(&self) -> &str {
        &self.session
    }

    pub fn target_id(&self) -> &str {
        &self.target_id
    }
}

/// JavaScript truthiness of a value that came back by value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A JavaScript string literal (JSON strings are valid JavaScript).
pub fn js_string(s: &str) -> String {
    Value::from(s).to_string()
}

fn abbreviate(js: &str) -> String {
    let one_line = js.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 120 {
        format!("{}...", one_line.chars().take(120).collect::<String>())
    } else {
        one_line
    }
}

/// Standard base64 (padding and line breaks ignored).
pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return Err(format!("invalid base64 byte {c:#04x} at {i}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
