//! The browser tests leave nothing behind: once a WebDriver helper is dropped (at the
//! end of a test, or while a failing test unwinds), none of the chromedriver and
//! chromium processes it started is alive and its profile folder is gone.
//!
//! Needs `chromium` and `chromium-driver` (CI installs both).

mod common;

use common::webdriver::{group_members, processes_using, Driver};
use std::path::PathBuf;

/// Starts a browser, loads a page (so renderers run), and returns what to check later:
/// its process group and folder, with the driver itself.
async fn started() -> (Driver, i32, PathBuf) {
    let d = Driver::start().await;
    d.open("data:text/html,<p id=x>hello</p>").await;
    d.wait_js(
        "return document.getElementById('x').textContent",
        "the page",
        |v| v == "hello",
    )
    .await;
    let (pgid, folder) = (d.browser().pgid(), d.browser().folder());
    let procs = group_members(pgid);
    // chromedriver, the browser and at least one helper (zygote, renderer, GPU).
    assert!(procs.len() >= 3, "{procs:?}");
    assert!(folder.join("profile").is_dir(), "{}", folder.display());
    (d, pgid, folder)
}

fn assert_gone(pgid: i32, folder: &std::path::Path) {
    let mut left = group_members(pgid);
    left.extend(processes_using(folder));
    assert!(left.is_empty(), "browser processes left: {left:?}");
    assert!(!folder.exists(), "{} left behind", folder.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_driver_leaves_no_process_and_no_folder() {
    let (d, pgid, folder) = started().await;
    drop(d);
    assert_gone(pgid, &folder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_process_and_no_folder() {
    let (d, pgid, folder) = started().await;
    let failed = tokio::spawn(async move {
        let _d = d;
        panic!("a browser test fails");
    })
    .await;
    assert!(failed.is_err_and(|e| e.is_panic()));
    assert_gone(pgid, &folder);
}
