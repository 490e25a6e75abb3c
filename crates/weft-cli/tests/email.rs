//! The email connector end to end, on the real binary: a flow step sends through a local SMTP
//! sink (RFC 5321, AUTH PLAIN), and the password never shows in run data, logs or answers.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::Server;
use serde_json::json;

const PASSWORD: &str = "smtp-canary-password-93b1c";

/// One message the sink accepted: envelope recipients and the raw data.
#[derive(Clone, Debug)]
struct Mail {
    rcpt: Vec<String>,
    data: String,
}

/// A minimal SMTP server on 127.0.0.1: EHLO, AUTH PLAIN (user `weft`), MAIL, RCPT, DATA, QUIT.
fn smtp_sink() -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let store = mails.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let store = store.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut say = |s: &str| w.write_all(format!("{s}\r\n").as_bytes());
                say("220 sink.test ESMTP").unwrap();
                let (mut rcpt, mut authed) = (Vec::new(), false);
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_string();
                    let upper = cmd.to_ascii_uppercase();
                    if upper.starts_with("EHLO") {
                        say("250-sink.test\r\n250-AUTH PLAIN\r\n250 8BITMIME").unwrap();
                    } else if let Some(b64) = cmd.strip_prefix("AUTH PLAIN ") {
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap_or_default();
                        authed = raw == format!("\0weft\0{PASSWORD}").as_bytes();
                        say(if authed {
                            "235 2.7.0 ok"
                        } else {
                            "535 5.7.8 bad credentials"
                        })
                        .unwrap();
                    } else if upper.starts_with("MAIL FROM") {
                        say(if authed {
                            "250 ok"
                        } else {
                            "530 5.7.0 authenticate first"
                        })
                        .unwrap();
                    } else if upper.starts_with("RCPT TO") {
                        rcpt.push(cmd[8..].trim().to_string());
                        say("250 ok").unwrap();
                    } else if upper == "DATA" {
                        say("354 go ahead").unwrap();
                        let mut data = String::new();
                        loop {
                            line.clear();
                            r.read_line(&mut line).unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        }
                        store.lock().unwrap().push(Mail {
                            rcpt: std::mem::take(&mut rcpt),
                            data,
                        });
                        say("250 2.0.0 queued as 42").unwrap();
                    } else if upper == "QUIT" {
                        let _ = say("221 bye");
                        return;
                    } else {
                        say("250 ok").unwrap();
                    }
                }
            });
        }
    });
    (port, mails)
}

#[test]
fn a_flow_sends_email_through_smtp_and_the_password_stays_secret() {
    let (port, mails) = smtp_sink();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = Server::start(&data, None, &[], &[]);
    set_mail(&srv, port, PASSWORD, "Weft <weft@example.com>");
    srv.apply(
        "name: notify\ntrigger:\n  manual: {}\nsteps:\n  - id: send\n    action: email.send\n    credential: mail\n    input:\n      to: '{{ .trigger.body.to }}'\n      bcc: audit@example.com\n      subject: 'Order {{ .trigger.body.order }} shipped'\n      text: 'Your order {{ .trigger.body.order }} is on its way.'\n      attachments: [{filename: receipt.txt, content: 'paid'}]\n",
    );
    let r = srv.cli_json(&[
        "run",
        "start",
        "notify",
        "--input",
        r#"{"to": "ada@example.com", "order": 1042}"#,
    ]);
    let run = srv.wait_run(r["run_id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(run["status"], "succeeded", "{run}");
    let out = &run["steps"][0]["output"];
    assert_eq!(
        out["accepted"],
        json!(["ada@example.com", "audit@example.com"]),
        "{run}"
    );
    let message_id = out["message_id"].as_str().unwrap().to_string();

    let got = mails.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt, ["<ada@example.com>", "<audit@example.com>"]);
    let d = &got[0].data;
    assert!(d.contains("Subject: Order 1042 shipped"), "{d}");
    assert!(d.contains("From: Weft <weft@example.com>"), "{d}");
    assert!(
        d.contains(&message_id),
        "the Message-ID sent is the one reported: {d}"
    );
    assert!(
        d.contains("receipt.txt") && !d.to_ascii_lowercase().contains("bcc:"),
        "{d}"
    );

    // The password is nowhere: not in the run, its logs, the credential, or the data dir.
    let logs = srv.cli(&["runs", "logs", r["run_id"].as_str().unwrap()]);
    let shown = srv.cli_json(&["credentials", "show", "mail"]);
    for text in [
        run.to_string(),
        String::from_utf8_lossy(&logs.stdout).to_string(),
        shown.to_string(),
    ] {
        assert!(!text.contains(PASSWORD), "{text}");
    }
    for e in walk(&data) {
        let bytes = std::fs::read(&e).unwrap_or_default();
        assert!(
            !bytes
                .windows(PASSWORD.len())
                .any(|w| w == PASSWORD.as_bytes()),
            "{} holds the password",
            e.display()
        );
    }

    // A wrong password fails the step permanently, says so, and sends nothing.
    set_mail(&srv, port, "wrong-password-xyz", "weft@example.com");
    let r = srv.cli_json(&[
        "run",
        "start",
        "notify",
        "--input",
        r#"{"to": "b@example.com", "order": 1}"#,
    ]);
    let run = srv.wait_run(r["run_id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        run["steps"][0]["attempts"], 1,
        "authentication failures are not retried: {run}"
    );
    let err = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("535") && !err.contains("wrong-password-xyz"),
        "{err}"
    );
    assert_eq!(mails.lock().unwrap().len(), 1);
}

#[test]
fn a_burst_of_failures_sends_one_alert_email_through_smtp() {
    let (port, mails) = smtp_sink();
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(&tmp.path().join("data"), None, &[], &[]);
    set_mail(&srv, port, PASSWORD, "Weft alerts <alerts@example.com>");
    srv.apply("name: orders\ntrigger:\n  manual: {}\nsteps:\n  - id: check\n    fail: 'order {{ .trigger.body.n }} is bad'\n");
    let out = srv.cli(&[
        "alerts",
        "create",
        "mailer",
        "--on",
        "run_failed",
        "--email",
        "ops@example.com",
    ]);
    assert!(!out.status.success(), "an email alert needs a credential");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("credential"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.cli_json(&[
        "alerts",
        "create",
        "mailer",
        "--on",
        "run_failed",
        "--flow",
        "orders",
        "--email",
        "ops@example.com",
        "--credential",
        "mail",
    ]);
    let runs = srv.failed_runs("orders", 10);
    let delivered = srv.wait_alert_delivered("mailer", Duration::from_secs(30));
    assert_eq!(
        delivered["items"].as_array().unwrap().len(),
        1,
        "{delivered}"
    );
    // Ten failures, one incident: one message, to the rule's address, naming the flow and a run.
    let got = mails.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].rcpt, ["<ops@example.com>"]);
    let d = &got[0].data;
    assert!(
        d.contains("<alerts@example.com>") && d.contains("To: ops@example.com"),
        "{d}"
    );
    assert!(d.contains("orders"), "{d}");
    assert!(runs.iter().any(|r| d.contains(r.as_str())), "{d}");
    assert!(!d.contains(PASSWORD), "{d}");
}

/// Sets credential `mail`: the sink at `port`, user `weft`, this password and sender.
fn set_mail(srv: &Server, port: u16, password: &str, from: &str) {
    srv.cli_json(&[
        "credentials",
        "set",
        "mail",
        "--connector",
        "email",
        "--value",
        "host=127.0.0.1",
        "--value",
        &format!("port={port}"),
        "--value",
        "tls=none",
        "--value",
        "username=weft",
        "--value",
        &format!("password={password}"),
        "--value",
        &format!("from={from}"),
    ]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
