//! The headless-Chromium test driver (tests/support/browser.rs) against a tiny axum site:
//! isolated contexts, real input, text stays text, screenshots, headers and console errors.
//! Needs Debian's `chromium` (or `$CHROMIUM`).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

#[path = "support/browser.rs"]
mod browser;

use std::net::SocketAddr;
use std::time::Instant;

use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use browser::{Browser, VIEWPORT, decode_base64};
use serde_json::json;

const INDEX: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>smoke</title></head>
<body>
  <input id="name" autocomplete="off">
  <button id="go">Go</button>
  <p id="out">initial</p>
  <form id="form"><input id="q" autocomplete="off"></form>
  <p id="submitted"></p>
  <script>
    document.getElementById('go').addEventListener('click', () => {
      document.getElementById('out').textContent = document.getElementById('name').value;
    });
    document.getElementById('form').addEventListener('submit', (e) => {
      e.preventDefault();
      document.getElementById('submitted').textContent = 'submitted:' + document.getElementById('q').value;
    });
  </script>
</body></html>"#;

/// An inline script under a CSP that forbids it, and a deliberate exception.
const CSP_PAGE: &str = r#"<!doctype html>
<html><body><p>csp</p>
<script>window.inlineRan = true;</script>
<script src="/boom.js"></script>
</body></html>"#;

async fn serve() -> SocketAddr {
    let app = axum::Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/csp",
            get(|| async {
                (
                    [(header::CONTENT_SECURITY_POLICY, "script-src 'self'")],
                    Html(CSP_PAGE),
                )
            }),
        )
        .route(
            "/boom.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript")],
                    "console.error('from console.error'); throw new Error('kaboom');",
                )
                    .into_response()
            }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let value = headers
                    .get("x-test-header")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "(none)".to_owned());
                Html(format!("<p id=\"h\">{value}</p>"))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[test]
fn base64_decoder() {
    assert_eq!(decode_base64("").unwrap(), b"");
    assert_eq!(decode_base64("Zg==").unwrap(), b"f");
    assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
    assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
    assert_eq!(decode_base64("Zm9vYmFy\n").unwrap(), b"foobar");
    assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    assert!(decode_base64("Zm9v!").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_drives_pages() {
    let started = Instant::now();
    let addr = serve().await;
    let base = format!("http://{addr}");
    let browser = Browser::launch().await;
    eprintln!("launched in {:?}", started.elapsed());

    // Two pages in two contexts, loaded at the same time over the one websocket.
    let (a, b) = tokio::join!(browser.new_page(), browser.new_page());
    let index = format!("{base}/");
    tokio::join!(a.goto(&index), b.goto(&index));
    assert_eq!(a.eval("document.title").await, json!("smoke"));
    assert_eq!(
        a.eval("[innerWidth, innerHeight]").await,
        json!([VIEWPORT.0, VIEWPORT.1])
    );

    // A cookie (and storage) set in context A is not visible in context B.
    a.eval("document.cookie = 'ctx=a; path=/'; localStorage.setItem('k', 'a')")
        .await;
    assert_eq!(a.eval("document.cookie").await, json!("ctx=a"));
    assert_eq!(b.eval("document.cookie").await, json!(""));
    assert_eq!(b.eval("localStorage.getItem('k')").await, json!(null));

    // Typing and a real click change the text; markup typed in stays text.
    let hostile = r#"<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>"#;
    a.type_text("#name", hostile).await;
    a.click("#go").await;
    let out = a
        .wait_for(
            "document.getElementById('out').textContent !== 'initial' && document.getElementById('out').textContent",
            "the click to change #out",
        )
        .await;
    assert_eq!(out, json!(hostile));
    assert_eq!(
        a.eval("document.getElementById('out').children.length")
            .await,
        json!(0)
    );
    assert_eq!(a.eval("typeof window.pwned").await, json!("undefined"));
    // Context B's page was untouched.
    assert_eq!(
        b.eval("document.getElementById('out').textContent").await,
        json!("initial")
    );

    // Enter submits the form.
    b.type_text("#q", "hello").await;
    b.press_enter("#q").await;
    b.wait_for(
        "document.getElementById('submitted').textContent === 'submitted:hello'",
        "Enter to submit the form",
    )
    .await;

    // eval awaits promises; exceptions carry their message.
    assert_eq!(
        a.eval("new Promise(r => setTimeout(() => r(42), 50))")
            .await,
        json!(42)
    );
    let err = a.try_eval("null.x").await.unwrap_err();
    assert!(err.contains("TypeError"), "{err}");

    // A screenshot is a PNG of the viewport.
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("nested/dir/a.png");
    a.screenshot(&shot).await;
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), VIEWPORT);

    // Extra headers reach the server.
    b.set_extra_headers(&[("X-Test-Header", "yes")]).await;
    b.goto(&format!("{base}/headers")).await;
    assert_eq!(
        b.eval("document.getElementById('h').textContent").await,
        json!("yes")
    );
    assert_eq!(a.console_errors().await, Vec::<String>::new());

    // A CSP violation, a console.error and an uncaught exception are reported.
    a.goto(&format!("{base}/csp")).await;
    assert_eq!(a.eval("typeof window.inlineRan").await, json!("undefined"));
    let errors = a.console_errors().await;
    eprintln!("console errors: {errors:#?}");
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("from console.error")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("kaboom")), "{errors:?}");
    assert_eq!(b.console_errors().await, Vec::<String>::new());

    // A wait that cannot succeed panics with what it waited for and the page's text.
    let started_wait = Instant::now();
    let timeout = tokio::spawn(async move {
        b.wait_for_within(
            "document.getElementById('nope')",
            "an element that never comes",
            std::time::Duration::from_secs(1),
        )
        .await;
    })
    .await
    .unwrap_err();
    let message = timeout
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    assert!(
        message.contains("an element that never comes") && message.contains("page text:\nyes"),
        "{message}"
    );
    eprintln!("wait_for timed out in {:?}", started_wait.elapsed());

    drop(a);
    drop(browser);
    eprintln!("total {:?}", started.elapsed());
}
