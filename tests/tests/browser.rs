//! The client's pages in a real browser (headless Chromium over WebDriver) against a real
//! cluster under a supervisor and a real `client serve` process: what a person does on
//! `/create/` and `/cluster/`, including a failover and a recovery watched live. Screenshots of
//! each page go to `target/test-output/browser/`.
//!
//! Also `client run` and `client status` against the same cluster; and the cluster page's
//! operator side: the plots of the leader's commits, the timeline, and automatic failover paused
//! and resumed from its buttons.

use std::process::Command;
use std::time::Duration;

use e2e::browser::{eventually, Browser, ClientProcess, PAGE_TIMEOUT};
use e2e::{Cluster, ClusterOptions, REJOIN_TIMEOUT};
use serde_json::json;

/// The role the cluster page shows for the node at `address`, from its live table.
async fn role_on_page(browser: &Browser, address: &str) -> Option<String> {
    let script = format!(
        "const row = document.querySelector('#nodes tr[data-address=\"' + {} + '\"]'); return row ? row.dataset.role : null;",
        json!(address)
    );
    browser.js(&script).await.as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_transactions_and_watches_a_failover_and_a_recovery() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    c.write(0, &[(1, 100)]).await;
    let old_leader = c.node(0).address();
    let client = ClientProcess::start(&old_leader, &c.supervisor_address()).await;
    let browser = Browser::start().await;

    // The form: the sample is there; a transaction commits and shows what it read.
    browser.goto(&client.url("/create/")).await;
    let sample = browser.js("return document.querySelector('#transaction').value;").await;
    assert_eq!(sample, "r(1)w(2=22)r(3)w(5=34)");
    browser.type_into("#transaction", "r(1)w(2=22)r(3)").await;
    browser.click("#run").await;
    browser.wait_text("#outcome", |t| t == "COMMIT").await;
    let values = browser.text("#values tbody").await.unwrap_or_default();
    assert!(values.contains("100"), "{values}");
    assert!(values.contains("no such account"), "{values}");
    let leader = browser.text("#fact-leader").await.unwrap_or_default();
    assert_eq!(leader, format!("node0 at {old_leader}"));
    assert!(browser.text("#fact-commit_ts").await.is_some_and(|t| t.parse::<i64>().is_ok()));
    assert!(browser.text("#fact-lsn").await.is_some_and(|t| t.parse::<i64>().is_ok()));
    assert_eq!(c.read(0, &[2]).await.values.get(&2), Some(&22));
    browser.screenshot("1-create-commit").await;

    // A typo: the error with its column, the text box keeps what was typed.
    browser.type_into("#transaction", "r(1)w(2=22").await;
    browser.click("#run").await;
    let title = browser.wait_text("#outcome", |t| t.contains("column")).await;
    assert!(title.contains("column 11"), "{title}");
    let error = browser.text("#error").await.unwrap_or_default();
    assert!(error.contains("expected ')'"), "{error}");
    let kept = browser.js("return document.querySelector('#transaction').value;").await;
    assert_eq!(kept, "r(1)w(2=22");
    browser.screenshot("2-create-parse-error").await;

    // The cluster page: node 0 leads; stop it with the drill button.
    browser.goto(&client.url("/cluster/")).await;
    eventually("the page to show node 0 leading", PAGE_TIMEOUT, || async {
        match role_on_page(&browser, &old_leader).await {
            Some(role) if role == "leader" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    browser.wait_text("#updated", |t| t.starts_with("Live")).await;
    browser.screenshot("3-cluster-before-drill").await;

    browser.click(&format!("#nodes tr[data-address=\"{old_leader}\"] button.down_leader")).await;
    let question = browser.accept_dialog().await;
    assert!(question.contains(&format!("Stop the leader {old_leader}")), "{question}");
    browser.wait_text("#flash", |t| t.contains("down_leader")).await;

    // From here the page must not reload: mark the window, and see the new leader arrive.
    browser.js("window.notReloaded = true; return null;").await;
    let new_leader = c.wait_leader_change(0).await;
    let new_address = c.node(new_leader).address();
    browser.wait_text("#cluster-leader", |t| t == new_address).await;
    eventually("the page to show the new leader and the old one down", PAGE_TIMEOUT, || async {
        let roles = (role_on_page(&browser, &new_address).await, role_on_page(&browser, &old_leader).await);
        match &roles {
            (Some(new), Some(old)) if new == "leader" && old == "down" => Ok(()),
            _ => Err(format!("{roles:?}")),
        }
    })
    .await;
    browser.wait_text("#failover", |t| t.contains(&new_address) && t.contains("writes unavailable")).await;
    assert_eq!(browser.js("return window.notReloaded === true;").await, true, "the page reloaded");
    browser.screenshot("4-cluster-after-failover").await;

    // The form again: the transaction goes through the new leader.
    browser.goto(&client.url("/create/")).await;
    browser.type_into("#transaction", "r(2)w(4=44)").await;
    browser.click("#run").await;
    browser.wait_text("#outcome", |t| t == "COMMIT").await;
    let leader = browser.text("#fact-leader").await.unwrap_or_default();
    assert!(leader.ends_with(&new_address), "{leader}");
    assert!(browser.text("#values tbody").await.unwrap_or_default().contains("22"));
    browser.screenshot("5-create-after-failover").await;

    // Bring the old leader back from the cluster page and watch it recover.
    browser.goto(&client.url("/cluster/")).await;
    browser.click(&format!("#nodes tr[data-address=\"{old_leader}\"] button.up_node")).await;
    browser.accept_dialog().await;
    browser.wait_text("#flash", |t| t.contains("up_node")).await;
    browser.js("window.notReloaded = true; return null;").await;
    eventually("the page to show node 0 back as a replica", REJOIN_TIMEOUT, || async {
        match role_on_page(&browser, &old_leader).await {
            Some(role) if role == "replica" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    browser.wait_text("#recoveries", |t| t.contains(&old_leader) && t.contains("recovered")).await;
    let history = browser.text("#history").await.unwrap_or_default();
    assert!(history.contains("r(2)w(4=44)") && history.contains(&new_address), "{history}");
    assert_eq!(browser.js("return window.notReloaded === true;").await, true, "the page reloaded");
    browser.screenshot("6-cluster-after-recovery").await;
    browser.close().await;

    // The command line against the same cluster: it starts at the old address, which is a
    // replica now, and ends at the leader.
    c.wait_member(0).await;
    let run = |args: &[&str]| {
        let output = Command::new(client.binary())
            .args(args)
            .env_remove("CLIENT_AGENT")
            .env_remove("CLIENT_SUPERVISOR")
            .output()
            .expect("run the client binary");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), out, err)
    };
    let supervisor = c.supervisor_address();
    let (code, out, err) = run(&["run", "r(4)w(6=66)", "--agent", &old_leader, "--supervisor", &supervisor]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("account 4 = 44") && out.contains("COMMIT: txn"), "{out}");
    assert!(out.contains(&format!("leader: node{new_leader} at {new_address}")), "{out}");
    let (code, out, err) = run(&["run", "r(1", "--agent", &old_leader]);
    assert_eq!(code, Some(2), "{out}{err}");
    let (code, out, err) = run(&["status", "--supervisor", &supervisor]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("leader: {new_address}")), "{out}");
    assert!(out.contains("last failover at"), "{out}");
    assert!(out.contains(&format!("{old_leader} recovered")), "{out}");

    // A commit sent while the leader has just stopped waits for the next one and commits there.
    let (code, _) = c.down_leader(new_leader).await;
    assert!(code.is_success(), "the drill on node {new_leader}");
    let (code, out, err) = run(&["run", "w(7=77)", "--agent", &new_address, "--supervisor", &supervisor]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("is unavailable: this node is down"), "{out}");
    let third = c.wait_leader_change(new_leader).await;
    assert!(out.contains(&format!("leader: {}\n", c.node(third).address())), "{out}");

    // A stopped cluster: every agent and the supervisor gone.
    c.kill_supervisor();
    for i in 0..c.len() {
        c.kill_agent(i);
    }
    let started = std::time::Instant::now();
    let (code, out, err) = run(&["run", "w(1=1)", "--agent", &old_leader, "--supervisor", &supervisor]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(err.contains("the cluster seems to be stopped"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// Whether the element matching `css` exists in the page.
async fn exists(browser: &Browser, css: &str) -> bool {
    browser.js(&format!("return document.querySelector({}) !== null;", json!(css))).await == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_commits_plotted_and_pauses_failover_from_the_cluster_page() {
    let c = Cluster::start_with(ClusterOptions::supervised(3)).await;
    let leader = c.node(0).address();
    let client = ClientProcess::start(&leader, &c.supervisor_address()).await;

    // The original system's form posted the transaction as `content`: it runs the same.
    let http = reqwest::Client::new();
    let answer = http.post(client.url("/create/")).form(&[("content", "w(8=88)")]).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let html = answer.text().await.unwrap();
    assert!(html.contains(r#"<h2 id="outcome">COMMIT</h2>"#), "{html}");
    assert_eq!(c.read(0, &[8]).await.values.get(&8), Some(&88));
    let form = [("transaction", "w(8=1)"), ("content", "w(8=2)")];
    let answer = http.post(client.url("/create/")).form(&form).send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("two different transactions"));

    // The plots are inline SVG; commits while the client samples the leader draw a line.
    let browser = Browser::start().await;
    browser.goto(&client.url("/cluster/")).await;
    assert!(exists(&browser, "#plots svg#plot-commits").await && exists(&browser, "#plots svg#plot-latency").await);
    let external = browser.js("return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href).filter(u => !u.startsWith(location.origin));").await;
    assert_eq!(external, json!([]), "no script, font or style from elsewhere");
    let mut balance = 0;
    eventually("the commits plot to draw a line", PAGE_TIMEOUT, || {
        balance += 1;
        let balance = balance;
        let c = &c;
        let browser = &browser;
        async move {
            c.write(0, &[(9, balance)]).await;
            let drawn = exists(browser, "#plot-commits path.line.rate").await
                && exists(browser, "#plot-latency path.line.p50").await;
            if drawn {
                Ok(())
            } else {
                Err("no line yet".to_string())
            }
        }
    })
    .await;
    assert!(browser.text("#timeline").await.is_some_and(|t| t.contains("Timeline")));
    browser.screenshot("7-cluster-plots").await;

    // Pause automatic failover: the page asks, then shows the banner and the event.
    browser.click("#state button.op.pause").await;
    let question = browser.accept_dialog().await;
    assert!(question.starts_with("Pause automatic failover (POST /pause)?"), "{question}");
    browser.wait_text("#flash", |t| t.starts_with("pause: automatic failover is OFF")).await;
    browser.wait_text("#maintenance", |t| t.contains("paused")).await;
    browser.wait_text("#timeline", |t| t.contains("maintenance_on")).await;
    assert_eq!(c.supervisor_status().await["maintenance"], true);
    browser.screenshot("8-cluster-maintenance").await;

    // Resume: the banner goes.
    browser.click("#state button.op.resume").await;
    let question = browser.accept_dialog().await;
    assert!(question.starts_with("Resume automatic failover (POST /resume)?"), "{question}");
    browser.wait_text("#flash", |t| t.starts_with("resume: automatic failover is on")).await;
    eventually("the maintenance banner to go", PAGE_TIMEOUT, || async {
        if exists(&browser, "#maintenance").await {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    browser.wait_text("#timeline", |t| t.contains("maintenance_off")).await;
    assert_eq!(c.supervisor_status().await["maintenance"], false);

    // On a phone's width the page still reads: nothing wider than the screen but the tables,
    // which scroll within their cards.
    browser.session().set_window_size(390, 1600).await.expect("resize the window");
    browser.goto(&client.url("/cluster/")).await;
    let overflow = browser.js("return document.documentElement.scrollWidth <= window.innerWidth + 1;").await;
    assert_eq!(overflow, true, "the page is wider than a phone");
    browser.screenshot("9-cluster-phone").await;
    browser.close().await;
}
