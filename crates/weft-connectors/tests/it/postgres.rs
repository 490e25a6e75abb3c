//! The `postgres` connector against a real PostgreSQL (`WEFT_TEST_DATABASE_URL`, an owner URL
//! as `scripts/pg.sh start` prints it; each test creates its own database). The conformance
//! check and the authentication-failure tests go through a stand-in in front of the real server
//! that answers the startup handshake with PostgreSQL's own error messages, since the test
//! cluster trusts every local login.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use url::Url;
use weft_connectors::{ActionError, Credential, NetPolicy, manifest, run_action};
use weft_vault::{Secret, SecretValues};

use crate::conformance::{Adapter, Answer, assert_clean, check_connector};
use crate::support::{allow_only, bounded, client, spawn_silent};

/// A fresh database on the test cluster.
struct Db {
    name: String,
    host: String,
    port: u16,
    user: String,
    password: String,
    owner: String,
}

impl Db {
    async fn new() -> Db {
        let owner = std::env::var("WEFT_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!("WEFT_TEST_DATABASE_URL is not set: start PostgreSQL with `eval \"$(scripts/pg.sh start)\"` (scripts/test.sh does this)")
        });
        let seed = RandomState::new().hash_one(Instant::now());
        let name = format!("weft_c_{seed:016x}");
        let mut c = sqlx::PgConnection::connect(&owner).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .unwrap();
        let u = Url::parse(&owner).unwrap();
        Db {
            host: u.host_str().unwrap().to_owned(),
            port: u.port().unwrap_or(5432),
            user: u.username().to_owned(),
            password: u.password().unwrap_or_default().to_owned(),
            owner: format!("{}/{name}", owner.rsplit_once('/').unwrap().0),
            name,
        }
    }

    /// Runs setup SQL as the owner, outside the connector.
    async fn exec(&self, sql: &str) {
        let mut c = sqlx::PgConnection::connect(&self.owner).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut c)
            .await
            .unwrap();
    }

    /// A credential of separate fields.
    fn fields(&self) -> SecretValues {
        let mut v = SecretValues::new();
        v.insert("host", Secret::new(self.host.as_str()));
        v.insert("port", Secret::new(self.port.to_string()));
        v.insert("database", Secret::new(self.name.as_str()));
        v.insert("user", Secret::new(self.user.as_str()));
        v.insert("password", Secret::new(self.password.as_str()));
        v
    }

    /// A `url` credential for `addr` (the server, or a stand-in in front of it).
    fn url_via(&self, addr: SocketAddr, password: &str) -> SecretValues {
        let mut v = SecretValues::new();
        v.insert(
            "url",
            Secret::new(format!(
                "postgres://{}:{password}@{addr}/{}",
                self.user, self.name
            )),
        );
        v
    }
}

fn loopback() -> NetPolicy {
    allow_only("127.0.0.0/8")
}

async fn run(
    policy: NetPolicy,
    action: &str,
    values: &SecretValues,
    input: Value,
) -> Result<Value, ActionError> {
    let m = manifest::find("postgres", None).unwrap();
    let cred = Credential {
        name: "pg",
        values,
        manifest: m,
    };
    let c = client(policy);
    bounded(run_action(
        &c,
        "postgres",
        action,
        &input,
        Some(cred),
        "run:step:0",
    ))
    .await
}

// ---------------------------------------------------------------------------------------------
// The stand-in: forwards to the real server, or answers the login with an error.
// ---------------------------------------------------------------------------------------------

struct StandIn {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<Answer>>,
    /// Passwords received in answer to a password request.
    passwords: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stand_in(upstream: SocketAddr) -> StandIn {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(Mutex::new(Answer::Success));
    let passwords = Arc::new(Mutex::new(Vec::new()));
    let task = {
        let (hits, answer, passwords) = (hits.clone(), answer.clone(), passwords.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                let mode = *answer.lock().unwrap();
                let passwords = passwords.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, mode, upstream, passwords).await;
                });
            }
        })
    };
    StandIn {
        addr,
        hits,
        answer,
        passwords,
        task,
    }
}

async fn serve(
    mut client: TcpStream,
    mode: Answer,
    upstream: SocketAddr,
    passwords: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    if mode == Answer::Success {
        let mut server = TcpStream::connect(upstream).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    // The startup message: length, protocol 3.0, then `key\0value\0` pairs naming the user.
    let startup = loop {
        let len = client.read_i32().await?;
        let mut body = vec![0; usize::try_from(len - 4).unwrap()];
        client.read_exact(&mut body).await?;
        if body[..4] == 80_877_103i32.to_be_bytes() {
            client.write_all(b"N").await?; // SSLRequest: no TLS here
            continue;
        }
        break body;
    };
    assert_eq!(startup[..4], 196_608i32.to_be_bytes(), "protocol 3.0");
    let params: Vec<String> = startup[4..]
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let user = params
        .iter()
        .position(|p| p == "user")
        .map(|i| params[i + 1].clone())
        .expect("the startup message names the user");
    let (code, message) = match mode {
        Answer::Unauthorized => {
            // AuthenticationCleartextPassword, then read the PasswordMessage.
            client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
            assert_eq!(client.read_u8().await?, b'p');
            let len = client.read_i32().await?;
            let mut body = vec![0; usize::try_from(len - 4).unwrap()];
            client.read_exact(&mut body).await?;
            body.pop(); // NUL
            passwords
                .lock()
                .unwrap()
                .push(String::from_utf8(body).unwrap());
            (
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            )
        }
        Answer::RateLimited => ("53300", "sorry, too many clients already".to_owned()),
        Answer::ServerError => ("57P03", "the database system is starting up".to_owned()),
        Answer::Success => unreachable!(),
    };
    client.write_all(&error_response(code, &message)).await?;
    Ok(())
}

/// An ErrorResponse message: severity, SQLSTATE and message fields.
fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

struct PgAdapter {
    db: Db,
    stand_in: StandIn,
}

const CONFORMANCE_PASSWORD: &str = "conformance-pw-7f3a9c";

impl Adapter for PgAdapter {
    fn connector(&self) -> &'static str {
        "postgres"
    }

    fn credential(&self) -> SecretValues {
        self.db.url_via(self.stand_in.addr, CONFORMANCE_PASSWORD)
    }

    fn secret_field(&self) -> &'static str {
        "url"
    }

    fn valid_input(&self, action: &str) -> Value {
        match action {
            "query" => json!({"sql": "SELECT $1::int4 AS n, $2::text AS s", "params": [7, "x"]}),
            "insert" => json!({
                "table": "items",
                "rows": [{"name": "conformance"}],
                "returning": ["id", "name"]
            }),
            other => panic!("no valid input for postgres.{other}"),
        }
    }

    fn answer(&self, answer: Answer) {
        *self.stand_in.answer.lock().unwrap() = answer;
    }

    fn rate_limit_delay(&self) -> Option<Duration> {
        // PostgreSQL's "too many clients" names no delay.
        None
    }

    fn hits(&self) -> usize {
        self.stand_in.hits.load(Ordering::SeqCst)
    }
}

async fn upstream(db: &Db) -> SocketAddr {
    tokio::net::lookup_host((db.host.as_str(), db.port))
        .await
        .unwrap()
        .next()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn postgres_conforms() {
    let db = Db::new().await;
    db.exec("CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL)")
        .await;
    let stand_in = stand_in(upstream(&db).await).await;
    let adapter = PgAdapter { db, stand_in };
    assert_eq!(check_connector(&adapter).await, 2);
    // The password is sent when the server asks for it (and nowhere else).
    let sent = adapter.stand_in.passwords.lock().unwrap().clone();
    assert!(!sent.is_empty());
    assert!(sent.iter().all(|p| p == CONFORMANCE_PASSWORD));
}

#[tokio::test]
async fn query_binds_parameters_of_many_types_and_nulls() {
    let db = Db::new().await;
    db.exec(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 20);
         CREATE TABLE t (
           id int8, small int2, n int4, f float8, r float4, price numeric(10,2), ok bool,
           name text, code varchar(8), label short_text, m mood, doc jsonb, raw json,
           at timestamptz, day date, local timestamp, clock time, uid uuid, data bytea,
           nums int4[], tags text[]
         )",
    )
    .await;
    let vals = db.fields();
    let insert = "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)";
    let params = json!([
        9_007_199_254_740_993i64, 7, "42", 1.5, 0.1, "12.30", true,
        "héllo 'quoted'; DROP TABLE t; --", "abc", "short", "happy",
        {"a": [1, 2, {"b": null}]}, [1, "x"],
        "2024-05-01T12:30:00.25+02:00", "2024-02-29", "2024-05-01T08:00:00", "07:05:09.5",
        "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "AAEC/w==", [1, null, 3], ["a", "b"]
    ]);
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": insert, "params": params}),
    )
    .await
    .unwrap();
    assert_eq!(out["row_count"], 1, "{out}");
    assert_eq!(out["rows"], json!([]));
    let nulls = vec![Value::Null; 21];
    run(
        loopback(),
        "query",
        &vals,
        json!({"sql": insert, "params": nulls}),
    )
    .await
    .unwrap();

    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT * FROM t ORDER BY id NULLS LAST", "params": []}),
    )
    .await
    .unwrap();
    assert_eq!(out["row_count"], 2);
    assert_eq!(out["truncated"], false);
    let row = &out["rows"][0];
    let expected = json!({
        "id": 9_007_199_254_740_993i64, "small": 7, "n": 42, "f": 1.5, "r": 0.1,
        "price": "12.30", "ok": true, "name": "héllo 'quoted'; DROP TABLE t; --",
        "code": "abc", "label": "short", "m": "happy", "doc": {"a": [1, 2, {"b": null}]},
        "raw": [1, "x"], "at": "2024-05-01T10:30:00.25Z", "day": "2024-02-29",
        "local": "2024-05-01T08:00:00", "clock": "07:05:09.5",
        "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "data": "AAEC/w==",
        "nums": [1, null, 3], "tags": ["a", "b"]
    });
    assert_eq!(row, &expected);
    let empty = &out["rows"][1];
    assert!(
        empty.as_object().unwrap().values().all(Value::is_null),
        "{empty}"
    );
    let types: Vec<(String, String)> = out["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(types[0], ("id".into(), "int8".into()));
    assert_eq!(types[5], ("price".into(), "numeric".into()));
    assert_eq!(types[10], ("m".into(), "mood".into()));
    assert_eq!(types[13], ("at".into(), "timestamptz".into()));
    assert_eq!(types[19], ("nums".into(), "int4[]".into()));

    // Parameters in WHERE, ANY over an array, and expressions; duplicate names get suffixes.
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({
            "sql": "SELECT id, n + $2 AS id, $3::text IS NULL AS missing, pg_sleep(0) AS slept FROM t WHERE n = ANY($1) AND at > $4",
            "params": [[41, 42], 1, null, "2024-01-01T00:00:00Z"]
        }),
    )
    .await
    .unwrap();
    assert_eq!(
        out["rows"],
        json!([{"id": 9_007_199_254_740_993i64, "id_2": 43, "missing": true, "slept": null}])
    );

    // A value that does not fit the inferred type names the parameter.
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT * FROM t WHERE n = $1", "params": ["forty-two"]}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.message().contains("`params[0]` ($1) must be an integer"),
        "{e}"
    );
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT * FROM t WHERE n = $1 AND id = $2", "params": [1]}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message()
            .contains("`params` has 1 values but the SQL uses 2 parameters"),
        "{e}"
    );
}

#[tokio::test]
async fn unsupported_types_are_refused_before_running() {
    let db = Db::new().await;
    db.exec("CREATE TABLE log (n int4)").await;
    let vals = db.fields();
    // The column check happens before execution, so the insert in the CTE never runs.
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "WITH x AS (INSERT INTO log VALUES (1) RETURNING n) SELECT n, interval '1 day' AS span FROM x"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.message().contains("column `span` has type interval"),
        "{e}"
    );
    assert!(e.message().contains("span::text"), "{e}");
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT count(*) AS c FROM log"}),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"][0]["c"], 0);
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT $1 + interval '1 day' AS x", "params": ["1 day"]}),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("$1::text::interval"), "{e}");
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT ($1::text::interval + interval '1 day')::text AS x", "params": ["1 day"]}),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"][0]["x"], "2 days");
}

#[tokio::test]
async fn max_rows_truncates_and_counts_everything() {
    let db = Db::new().await;
    let vals = db.fields();
    let sql = "SELECT g AS n FROM generate_series(1, $1::int) g";
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": sql, "params": [25], "max_rows": 10}),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"].as_array().unwrap().len(), 10);
    assert_eq!(out["rows"][9], json!({"n": 10}));
    assert_eq!(out["row_count"], 25);
    assert_eq!(out["truncated"], true);
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": sql, "params": [1500]}),
    )
    .await
    .unwrap();
    assert_eq!(
        out["rows"].as_array().unwrap().len(),
        1000,
        "default max_rows"
    );
    assert_eq!(out["truncated"], true);
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": sql, "params": [3], "max_rows": 3}),
    )
    .await
    .unwrap();
    assert_eq!(out["truncated"], false);
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": sql, "params": [3], "max_rows": 10_001}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message()
            .contains("`max_rows` must be an integer from 1 to 10000"),
        "{e}"
    );
}

#[tokio::test]
async fn insert_rows_with_returning_defaults_and_schemas() {
    let db = Db::new().await;
    db.exec(
        "CREATE TABLE items (id serial PRIMARY KEY, sku text UNIQUE NOT NULL, qty int4 NOT NULL DEFAULT 1, note text, \"Mixed\" text);
         CREATE SCHEMA shop; CREATE TABLE shop.orders (id bigserial PRIMARY KEY, total numeric(8,2));",
    )
    .await;
    let vals = db.fields();
    let out = run(
        loopback(),
        "insert",
        &vals,
        json!({
            "table": "items",
            "rows": [
                {"sku": "a", "qty": 5, "note": "first"},
                {"sku": "b", "note": null},
                {"sku": "c", "qty": 2, "Mixed": "Case"}
            ],
            "returning": ["id", "sku", "qty", "note", "Mixed"]
        }),
    )
    .await
    .unwrap();
    assert_eq!(out["inserted"], 3);
    assert_eq!(
        out["rows"],
        json!([
            {"id": 1, "sku": "a", "qty": 5, "note": "first", "Mixed": null},
            {"id": 2, "sku": "b", "qty": 1, "note": null, "Mixed": null},
            {"id": 3, "sku": "c", "qty": 2, "note": null, "Mixed": "Case"}
        ])
    );
    let out = run(
        loopback(),
        "insert",
        &vals,
        json!({"table": "shop.orders", "rows": [{"total": "19.90"}, {"total": 5}], "returning": ["*"]}),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        json!({"inserted": 2, "rows": [{"id": 1, "total": "19.90"}, {"id": 2, "total": "5.00"}]})
    );
    // Without `returning`, only the count.
    let out = run(
        loopback(),
        "insert",
        &vals,
        json!({"table": "items", "rows": [{"sku": "d"}]}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"inserted": 1, "rows": []}));
    // Many rows with many columns are split into several statements, in one transaction.
    db.exec(&format!(
        "CREATE TABLE wide ({})",
        (0..100)
            .map(|i| format!("c{i} int4"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await;
    let row: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("c{i}"), json!(i))).collect();
    let rows = vec![Value::Object(row); 1000];
    let out = run(
        loopback(),
        "insert",
        &vals,
        json!({"table": "wide", "rows": rows}),
    )
    .await
    .unwrap();
    assert_eq!(out["inserted"], 1000);
}

#[tokio::test]
async fn insert_conflicts_and_atomicity() {
    let db = Db::new().await;
    db.exec("CREATE TABLE items (sku text PRIMARY KEY, qty int4 CHECK (qty > 0))")
        .await;
    let vals = db.fields();
    let input = |on_conflict: &str| {
        json!({
            "table": "items",
            "rows": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
            "returning": ["sku"],
            "on_conflict": on_conflict
        })
    };
    let out = run(loopback(), "insert", &vals, input("do_nothing"))
        .await
        .unwrap();
    assert_eq!(
        out,
        json!({"inserted": 2, "rows": [{"sku": "a"}, {"sku": "b"}]})
    );
    // A retried insert with `do_nothing` inserts nothing twice.
    let out = run(loopback(), "insert", &vals, input("do_nothing"))
        .await
        .unwrap();
    assert_eq!(out, json!({"inserted": 0, "rows": []}));
    let e = run(loopback(), "insert", &vals, input("error"))
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("PostgreSQL error 23505"), "{e}");
    assert!(e.message().contains("do_nothing"), "{e}");
    let o = e.output().unwrap();
    assert_eq!(o["sqlstate"], "23505");
    assert_eq!(o["constraint"], "items_pkey");
    assert_eq!(o["table"], "items");

    // All rows in one transaction: a bad third row leaves no trace of the first two.
    let e = run(
        loopback(),
        "insert",
        &vals,
        json!({"table": "items", "rows": [{"sku": "x", "qty": 1}, {"sku": "y", "qty": 1}, {"sku": "z", "qty": -1}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.output().unwrap()["sqlstate"], "23514", "{e}");
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT count(*) AS n FROM items"}),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"][0]["n"], 2);

    // A value that does not fit its column names the row and column.
    let e = run(
        loopback(),
        "insert",
        &vals,
        json!({"table": "items", "rows": [{"sku": "q", "qty": 1}, {"sku": "r", "qty": "lots"}]}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message().contains("`rows[1].qty` must be an integer"),
        "{e}"
    );
}

#[tokio::test]
async fn injection_through_identifiers_is_refused_before_connecting() {
    // A listener that would count any connection: refused input must not reach it.
    let silent = spawn_silent().await;
    let mut vals = SecretValues::new();
    vals.insert(
        "url",
        Secret::new(format!("postgres://u:secret-pw-1@{}/db", silent.addr)),
    );
    let cases = [
        (
            json!({"table": "items; DROP TABLE items", "rows": [{"a": 1}]}),
            "`table`",
        ),
        (
            json!({"table": "items\" (a) VALUES (1); --", "rows": [{"a": 1}]}),
            "`table`",
        ),
        (json!({"table": "a.b.c", "rows": [{"a": 1}]}), "`table`"),
        (json!({"table": "", "rows": [{"a": 1}]}), "`table`"),
        (
            json!({"table": "items", "rows": [{"a": 1}, {"a) VALUES (1); DROP TABLE items; --": 1}]}),
            "`rows[1]`",
        ),
        (
            json!({"table": "items", "rows": [{"a\"b": 1}]}),
            "`rows[0]`",
        ),
        (
            json!({"table": "items", "rows": [{"a": 1}], "returning": ["id; DROP TABLE items"]}),
            "`returning[0]`",
        ),
        (
            json!({"table": "items", "rows": [{"a": 1}], "returning": ["id", "*"]}),
            "`returning[1]`",
        ),
        (json!({"table": "items", "rows": []}), "`rows`"),
        (json!({"table": "items", "rows": [{}]}), "`rows`"),
        (json!({"table": "items", "rows": [1]}), "`rows[0]`"),
        (
            json!({"table": "items", "rows": [{"a": 1}], "on_conflict": "update"}),
            "`on_conflict`",
        ),
    ];
    for (input, needle) in cases {
        let e = run(NetPolicy::allow_all(), "insert", &vals, input.clone())
            .await
            .unwrap_err();
        assert!(!e.is_retryable(), "{input}: {e}");
        assert!(e.message().contains(needle), "{input}: {e}");
    }
    assert_eq!(silent.hits(), 0, "refused input reached the network");

    // Against the real server, names are quoted: a strange-but-valid name is just a name.
    let db = Db::new().await;
    db.exec("CREATE TABLE items (a int4)").await;
    let e = run(
        loopback(),
        "insert",
        &db.fields(),
        json!({"table": "Items", "rows": [{"a": 1}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.output().unwrap()["sqlstate"], "42P01", "{e}");
}

#[tokio::test]
async fn sql_errors_are_permanent_and_quote_sqlstate() {
    let db = Db::new().await;
    let vals = db.fields();
    let e = run(loopback(), "query", &vals, json!({"sql": "SELEC 1"}))
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.message().starts_with(
            "postgres.query: PostgreSQL error 42601: syntax error at or near \"SELEC\""
        ),
        "{e}"
    );
    let o = e.output().unwrap();
    assert_eq!(o["sqlstate"], "42601");
    assert_eq!(o["position"], 1);
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT * FROM nowhere"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("42P01"), "{e}");
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT 1/$1::int AS x", "params": [0]}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("22012"), "{e}");
    // One statement per step: the extended protocol refuses several.
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT 1; SELECT 2"}),
    )
    .await
    .unwrap_err();
    assert!(e.message().contains("42601"), "{e}");
    // The database must exist.
    let mut other = db.fields();
    other.insert("database", Secret::new("weft_no_such_db"));
    let e = run(loopback(), "query", &other, json!({"sql": "SELECT 1"}))
        .await
        .unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("3D000"), "{e}");
}

#[tokio::test]
async fn authentication_failures_are_permanent_and_never_echo_the_password() {
    let db = Db::new().await;
    let stand_in = stand_in(upstream(&db).await).await;
    *stand_in.answer.lock().unwrap() = Answer::Unauthorized;
    let password = "wrong-p@ss-canary-42";
    // Percent-encoded in the URL; the decoded password is what the server receives.
    let vals = db.url_via(stand_in.addr, "wrong-p%40ss-canary-42");
    let r = run(
        NetPolicy::allow_all(),
        "query",
        &vals,
        json!({"sql": "SELECT 1"}),
    )
    .await;
    assert_clean(&r, password, "wrong password");
    assert_clean(&r, "wrong-p%40ss-canary-42", "wrong password");
    let e = r.unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("28P01"), "{e}");
    assert!(
        e.message().contains("password authentication failed"),
        "{e}"
    );
    assert!(e.message().contains("credential 'pg'"), "{e}");
    assert_eq!(stand_in.passwords.lock().unwrap().as_slice(), [password]);

    // The real server: a role that does not exist.
    let mut vals = db.fields();
    vals.insert("user", Secret::new("weft_no_such_role"));
    vals.insert("password", Secret::new("another-canary-77"));
    let r = run(loopback(), "query", &vals, json!({"sql": "SELECT 1"})).await;
    assert_clean(&r, "another-canary-77", "unknown role");
    let e = r.unwrap_err();
    assert!(!e.is_retryable());
    assert!(e.message().contains("28000"), "{e}");
}

#[tokio::test]
async fn unreachable_servers_are_retryable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut vals = SecretValues::new();
    vals.insert("host", Secret::new("127.0.0.1"));
    vals.insert("port", Secret::new(port.to_string()));
    vals.insert("database", Secret::new("db"));
    vals.insert("user", Secret::new("u"));
    vals.insert("password", Secret::new("unreachable-canary"));
    let r = run(loopback(), "query", &vals, json!({"sql": "SELECT 1"})).await;
    assert_clean(&r, "unreachable-canary", "refused");
    let e = r.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(
        e.message().contains(&format!(
            "could not connect to PostgreSQL at 127.0.0.1:{port}"
        )),
        "{e}"
    );

    // A server that accepts and never answers: the connect timeout (here `timeout`) applies.
    let silent = spawn_silent().await;
    vals.insert("port", Secret::new(silent.port().to_string()));
    let started = Instant::now();
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT 1", "timeout": "300ms"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.message().contains("timed out after 300ms"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(silent.hits(), 1);

    // The stand-in's 57P03 and 53300 answers: retryable; the latter is a rate limit.
    let db = Db::new().await;
    let stand_in = stand_in(upstream(&db).await).await;
    let vals = db.url_via(stand_in.addr, "pw-canary-123");
    *stand_in.answer.lock().unwrap() = Answer::RateLimited;
    let e = run(
        NetPolicy::allow_all(),
        "query",
        &vals,
        json!({"sql": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.output().unwrap()["rate_limited"], true);
    *stand_in.answer.lock().unwrap() = Answer::ServerError;
    let e = run(
        NetPolicy::allow_all(),
        "query",
        &vals,
        json!({"sql": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.output().unwrap().get("rate_limited").is_none());
}

#[tokio::test]
async fn the_default_policy_refuses_loopback_without_connecting() {
    let silent = spawn_silent().await;
    let mut vals = SecretValues::new();
    vals.insert("host", Secret::new("127.0.0.1"));
    vals.insert("port", Secret::new(silent.port().to_string()));
    vals.insert("database", Secret::new("db"));
    vals.insert("user", Secret::new("u"));
    vals.insert("password", Secret::new("policy-canary-1"));
    for action in ["query", "insert"] {
        let input = if action == "query" {
            json!({"sql": "SELECT 1"})
        } else {
            json!({"table": "t", "rows": [{"a": 1}]})
        };
        let r = run(NetPolicy::default(), action, &vals, input).await;
        assert_clean(&r, "policy-canary-1", "policy");
        let e = r.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        assert!(
            e.message().starts_with(&format!(
                "postgres.{action}: refused to connect to 127.0.0.1 (host `127.0.0.1`)"
            )),
            "{e}"
        );
        assert!(e.message().contains("--allow-private-network"), "{e}");
    }
    // A name resolving only to loopback, and a URL with an IPv6 loopback literal.
    vals.insert("host", Secret::new("localhost"));
    let e = run(
        NetPolicy::default(),
        "query",
        &vals,
        json!({"sql": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert!(!e.is_retryable());
    assert!(
        e.message().contains(
            "refused to connect to `localhost`: it resolves only to non-public addresses"
        ),
        "{e}"
    );
    let mut url = SecretValues::new();
    url.insert(
        "url",
        Secret::new(format!(
            "postgres://u:p@[::ffff:127.0.0.1]:{}/db",
            silent.port()
        )),
    );
    let e = run(
        NetPolicy::default(),
        "query",
        &url,
        json!({"sql": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert!(
        e.message()
            .contains("refused to connect to ::ffff:127.0.0.1"),
        "{e}"
    );
    assert_eq!(silent.hits(), 0, "a refused address was connected to");
}

#[tokio::test]
async fn statement_timeout_is_retryable_and_rolls_back() {
    let db = Db::new().await;
    db.exec("CREATE TABLE marks (n int4)").await;
    let vals = db.fields();
    let started = Instant::now();
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT pg_sleep(5)", "timeout": "200ms"}),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(e.is_retryable(), "{e}");
    assert!(e.message().contains("57014"), "{e}");
    assert!(e.message().contains("`timeout` (200ms)"), "{e}");
    assert!(e.message().contains("nothing was committed"), "{e}");
    // A data-modifying statement that times out leaves nothing behind.
    let e = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "WITH w AS (INSERT INTO marks VALUES (1)) SELECT pg_sleep(5)", "timeout": 0.2}),
    )
    .await
    .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let out = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT count(*) AS n FROM marks"}),
    )
    .await
    .unwrap();
    assert_eq!(out["rows"][0]["n"], 0);
}

#[tokio::test]
async fn secrets_never_reach_messages_or_outputs() {
    let db = Db::new().await;
    // The password, percent-encoded in `url`; trust authentication ignores it.
    let decoded = "s3cr3t/p@ss-canary";
    let mut vals = SecretValues::new();
    vals.insert(
        "url",
        Secret::new(format!(
            "postgres://{}:s3cr3t%2Fp%40ss-canary@{}:{}/{}",
            db.user, db.host, db.port, db.name
        )),
    );
    let url = vals.get("url").unwrap().expose().to_owned();
    // Echoed by a query…
    let r = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT $1::text AS echo, $2::text AS whole", "params": [decoded, url]}),
    )
    .await;
    assert_clean(&r, decoded, "echo");
    assert_clean(&r, &url, "echo");
    assert_eq!(r.unwrap()["rows"][0]["echo"], "[redacted]");
    // …and quoted by a server error.
    let r = run(
        loopback(),
        "query",
        &vals,
        json!({"sql": "SELECT CAST($1::text AS int4) AS n", "params": [decoded]}),
    )
    .await;
    assert_clean(&r, decoded, "cast error");
    let e = r.unwrap_err();
    assert!(e.message().contains("22P02"), "{e}");
    assert!(e.message().contains("[redacted]"), "{e}");

    // Bad credentials never quote the URL.
    for (bad, needle) in [
        ("mysql://u:leaky-pw-000@h/db", "must start with postgres://"),
        (
            "postgres://u:leaky-pw-000@h:5432/db?sslmode=require",
            "sslmode 'require' is not supported",
        ),
        (
            "postgres://u:leaky-pw-000@h/db?host=/tmp",
            "parameter `host`",
        ),
        ("postgres://u:leaky-pw-000@h:5432", "no database name"),
        ("postgres://:leaky-pw-000@h/db", "no user name"),
        ("postgres://u:leaky-pw-000@a,b/db", "must name one host"),
    ] {
        let mut v = SecretValues::new();
        v.insert("url", Secret::new(bad));
        let r = run(loopback(), "query", &v, json!({"sql": "SELECT 1"})).await;
        assert_clean(&r, "leaky-pw-000", bad);
        let e = r.unwrap_err();
        assert!(!e.is_retryable(), "{bad}: {e}");
        assert!(e.message().contains(needle), "{bad}: {e}");
    }
    let mut both = db.fields();
    both.insert("url", Secret::new(url.as_str()));
    let e = run(loopback(), "query", &both, json!({"sql": "SELECT 1"}))
        .await
        .unwrap_err();
    assert!(e.message().contains("not both"), "{e}");
    let mut no_user = db.fields();
    no_user.insert("user", Secret::new(""));
    let e = run(loopback(), "query", &no_user, json!({"sql": "SELECT 1"}))
        .await
        .unwrap_err();
    assert!(e.message().contains("has no `user`"), "{e}");
}
