//! The PostgreSQL connector: `postgres.query` runs one SQL statement with bound parameters and
//! returns its rows; `postgres.insert` inserts rows into a table in one transaction.
//!
//! # Connection
//!
//! The credential holds either `url` (`postgres://USER:PASSWORD@HOST:PORT/DATABASE`, optionally
//! `?sslmode=disable`) or the separate fields `host`, `port` (5432), `database`, `user`,
//! `password` and `sslmode`; giving both is refused, so it is never unclear which one is used.
//! Only `sslmode=disable` is supported in this version (no TLS): use it on trusted networks.
//!
//! Every step opens one connection and closes it (no pool yet). The host is resolved here and
//! every address is checked against the client's [`NetPolicy`] exactly as outbound HTTP is
//! (`NetPolicy::permits`, same refusal messages); the connection is then made to the checked IP
//! itself, so a second DNS answer cannot redirect it (no DNS rebinding). Connecting is bounded by
//! 10 s, or by `timeout` if that is shorter. Nothing is read from `~/.pgpass` or `PGPASSWORD`.
//!
//! # Statements
//!
//! Each action runs in a transaction with `SET LOCAL statement_timeout` (the input's `timeout`,
//! default 30 s, at most 300 s); Weft also gives up 5 s after that. Parameters are always bound
//! (`$1`, `$2`, …) in PostgreSQL's binary format, converted from JSON to the type PostgreSQL
//! infers for each parameter; identifiers given to `insert` are validated and quoted. SQL text is
//! never built from values.
//!
//! JSON ↔ PostgreSQL: `bool`; `int2/int4/int8/oid` and `float4/float8` are JSON numbers
//! (non-finite floats are the strings `NaN`, `Infinity`, `-Infinity`); `numeric` is a string,
//! exactly as stored (numbers and numeric strings are accepted as input); text types, enums,
//! `name`, `xml` and `citext` are strings; `json`/`jsonb` are JSON values; `uuid` is a string;
//! `bytea` is base64; `date` is `YYYY-MM-DD`, `time` `HH:MM:SS[.ffffff]`, `timestamp`
//! `YYYY-MM-DDTHH:MM:SS[.ffffff]` (a `timestamp` given with an offset is converted to UTC) and
//! `timestamptz` RFC 3339 in UTC (`…Z`; input without an offset is taken as UTC); `void` is
//! `null`; one-dimensional arrays of these are JSON arrays (multi-dimensional ones are nested
//! arrays on output). A column or parameter of any other type (interval, inet, money, ranges,
//! composites, …) is refused *before the statement runs*, naming the column or parameter and the
//! cast that fixes it (`col::text`, `$1::text::interval`).
//!
//! # Errors
//!
//! PostgreSQL's errors are quoted with their SQLSTATE, and the output is `{sqlstate, message,
//! detail, hint, …}`. Retryable: connection failures and timeouts, class `08` (connection),
//! `53` (resources; `53300` too many connections is also marked `rate_limited`), `57P01`–`57P03`
//! (shutdown, starting up), `40001` (serialization), `40P01` (deadlock), `55P03` (lock not
//! available), `58` (I/O) and `57014` (statement timeout: the transaction was rolled back, so
//! nothing was committed and a retry is safe). Everything else is permanent: `42` (syntax,
//! undefined table or column, privilege), `23` (constraints), `28` (authentication), `22`
//! (data), bad input, the network policy.
//!
//! # Idempotency
//!
//! Databases take no idempotency key. A retried `insert` after an ambiguous failure (the
//! connection lost while committing) may insert twice; to make retries safe, give the table a
//! unique key that the rows carry and use `on_conflict: "do_nothing"`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::TryStreamExt as _;
use serde_json::{Map, Number, Value, json};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgConnectOptions, PgConnection, PgDatabaseError,
    PgErrorPosition, PgRow, PgSslMode, PgStatement, PgTypeInfo, PgTypeKind, Postgres,
};
use sqlx::{
    Arguments as _, AssertSqlSafe, Column as _, Connection as _, Either, Encode, Executor as _,
    Row as _, SqlSafeStr as _, Statement as _, Type, TypeInfo as _, ValueRef as _,
};
use url::Url;
use weft_vault::{Redactor, Secret};

use super::common::{Call, as_integer, kind, permitted_addresses};
use crate::catalog::Credential;
use crate::error::ActionError;
use crate::http::{DEFAULT_TIMEOUT, GuardedClient, MAX_RESPONSE_BYTES, MAX_TIMEOUT, NetPolicy};

/// Rows `postgres.query` returns when the input gives no `max_rows`.
pub const DEFAULT_MAX_ROWS: usize = 1000;
/// Largest `max_rows`.
pub const MAX_ROWS: usize = 10_000;
/// Most rows one `postgres.insert` takes.
pub const MAX_INSERT_ROWS: usize = 1000;
/// Longest time spent connecting (TCP and login), unless `timeout` is shorter.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Weft waits beyond the statement timeout before giving up on the server.
const GRACE: Duration = Duration::from_secs(5);
/// Most bind parameters in one statement (the protocol counts them in 16 bits).
const MAX_PARAMS: usize = 65_535;
/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// Runs one postgres action.
pub async fn run(
    client: &GuardedClient,
    action: &str,
    input: &Value,
    credential: Credential<'_>,
    _idempotency_key: &str,
) -> Result<Value, ActionError> {
    let call = Call::new(action, credential);
    // The password decoded from `url` differs from the stored `url` value the call masks.
    let mut extra = Redactor::default();
    let result = run_inner(&call, client.policy(), action, input, &mut extra).await;
    mask(&extra, call.finish(result))
}

async fn run_inner(
    call: &Call<'_>,
    policy: &NetPolicy,
    action: &str,
    input: &Value,
    extra: &mut Redactor,
) -> Result<Value, ActionError> {
    let spec = call.spec(action)?;
    let obj = call.input(spec, input)?;
    let timeout = match obj.get("timeout") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(v) => parse_timeout(call, v)?,
    };
    let job = match action {
        "query" => Job::Query(parse_query(call, obj)?),
        "insert" => Job::Insert(parse_insert(call, obj)?),
        // `spec` knows the manifest's actions; this only fires if the manifest gains one.
        _ => {
            return Err(ActionError::permanent(format!(
                "`{}` has no implementation in this build of Weft",
                call.name
            )));
        }
    };
    let target = Target::from_credential(call)?;
    if !target.password.is_empty() {
        extra.add(&Secret::new(target.password.as_str()));
    }
    let mut conn = connect(call, policy, &target, CONNECT_TIMEOUT.min(timeout)).await?;
    let work = async {
        begin(&mut conn, timeout).await?;
        let out = match &job {
            Job::Query(q) => run_query(&mut conn, q).await?,
            Job::Insert(i) => run_insert(&mut conn, i).await?,
        };
        sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
        Ok::<Value, Failure>(out)
    };
    let result = tokio::time::timeout(timeout + GRACE, work).await;
    let ctx = Ctx {
        call,
        target: &target,
        timeout,
    };
    let result = match result {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(Failure::Action(e))) => Err(e),
        Ok(Err(Failure::Sql(e))) => Err(ctx.classify(e, Phase::Statement)),
        Err(_) => Err(ActionError::retryable(format!(
            "{}: PostgreSQL at {} did not finish within {} (the statement timeout plus {}s); the connection was closed, so an uncommitted transaction is rolled back. The step can be retried; raise `timeout` (at most {}s) if the statement needs longer",
            call.name,
            target.shown(),
            human(timeout),
            GRACE.as_secs(),
            MAX_TIMEOUT.as_secs()
        ))),
    };
    // A clean goodbye when the connection is still usable; a broken one is simply dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
    result
}

/// Masks `extra`'s secrets in what the action returns (after [`Call::finish`]).
fn mask(extra: &Redactor, result: Result<Value, ActionError>) -> Result<Value, ActionError> {
    if extra.is_empty() {
        return result;
    }
    match result {
        Ok(mut v) => {
            extra.value(&mut v);
            Ok(v)
        }
        Err(ActionError::Retryable {
            message,
            retry_after,
            mut output,
        }) => {
            if let Some(o) = output.as_mut() {
                extra.value(o);
            }
            Err(ActionError::Retryable {
                message: extra.text(&message),
                retry_after,
                output,
            })
        }
        Err(ActionError::Permanent {
            message,
            mut output,
        }) => {
            if let Some(o) = output.as_mut() {
                extra.value(o);
            }
            Err(ActionError::Permanent {
                message: extra.text(&message),
                output,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------------------------

enum Job<'v> {
    Query(QueryJob<'v>),
    Insert(InsertJob<'v>),
}

struct QueryJob<'v> {
    sql: &'v str,
    params: &'v [Value],
    max_rows: usize,
}

struct InsertJob<'v> {
    /// `"schema"."table"` or `"table"`, quoted.
    table: String,
    /// Every key of any row, in order of first appearance.
    columns: Vec<&'v str>,
    rows: Vec<&'v Map<String, Value>>,
    /// `RETURNING …`, quoted, or empty.
    returning: String,
    do_nothing: bool,
}

fn parse_query<'v>(
    call: &Call<'_>,
    obj: &'v Map<String, Value>,
) -> Result<QueryJob<'v>, ActionError> {
    let sql = call.required_str(obj, "sql")?;
    let params: &[Value] = match obj.get("params") {
        Some(Value::Array(p)) => p,
        _ => &[],
    };
    if params.len() > MAX_PARAMS {
        return Err(call.bad_input(
            "params",
            format!(
                "has {} values; a statement takes at most {MAX_PARAMS}",
                params.len()
            ),
        ));
    }
    let max_rows = match obj.get("max_rows") {
        None | Some(Value::Null) => DEFAULT_MAX_ROWS,
        Some(v) => match as_integer(v) {
            Some(n) if n >= 1 && n.unsigned_abs() <= MAX_ROWS as u64 => n.unsigned_abs() as usize,
            _ => {
                return Err(call.bad_input(
                    "max_rows",
                    format!("must be an integer from 1 to {MAX_ROWS}, got {v}"),
                ));
            }
        },
    };
    Ok(QueryJob {
        sql,
        params,
        max_rows,
    })
}

fn parse_insert<'v>(
    call: &Call<'_>,
    obj: &'v Map<String, Value>,
) -> Result<InsertJob<'v>, ActionError> {
    let raw_table = call.required_str(obj, "table")?;
    let table = qualified_table(raw_table).ok_or_else(|| {
        call.bad_input(
            "table",
            format!(
                "{} is not a table name: use `table` or `schema.table`, each part {IDENT_RULE}",
                shown_ident(raw_table)
            ),
        )
    })?;
    let list = obj.get("rows").and_then(Value::as_array);
    let list = list.map_or(&[][..], Vec::as_slice);
    if list.is_empty() || list.len() > MAX_INSERT_ROWS {
        return Err(call.bad_input(
            "rows",
            format!(
                "must hold 1 to {MAX_INSERT_ROWS} rows (objects of column: value), got {}",
                list.len()
            ),
        ));
    }
    let mut rows = Vec::with_capacity(list.len());
    let mut columns: Vec<&str> = Vec::new();
    for (i, row) in list.iter().enumerate() {
        let Some(row) = row.as_object() else {
            return Err(call.bad_input(
                &format!("rows[{i}]"),
                format!("must be an object of column: value, got {}", kind(row)),
            ));
        };
        for key in row.keys() {
            if !valid_ident(key) {
                return Err(call.bad_input(
                    &format!("rows[{i}]"),
                    format!(
                        "has the key {}, which is not a column name: column names are {IDENT_RULE}",
                        shown_ident(key)
                    ),
                ));
            }
            if !columns.contains(&key.as_str()) {
                columns.push(key);
            }
        }
        rows.push(row);
    }
    if columns.is_empty() {
        return Err(call.bad_input(
            "rows",
            "has no columns: give each row at least one column: value",
        ));
    }
    let returning = match obj.get("returning").and_then(Value::as_array) {
        None => String::new(),
        Some(names) if names.is_empty() => String::new(),
        Some(names) if names.len() == 1 && names[0] == "*" => " RETURNING *".to_owned(),
        Some(names) => {
            let mut quoted = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                match name.as_str() {
                    Some(n) if valid_ident(n) => quoted.push(quote_ident(n)),
                    _ => {
                        return Err(call.bad_input(
                            &format!("returning[{i}]"),
                            format!(
                                "{} is not a column name: column names are {IDENT_RULE} (or give [\"*\"] alone for every column)",
                                name.as_str().map_or_else(|| name.to_string(), shown_ident)
                            ),
                        ));
                    }
                }
            }
            format!(" RETURNING {}", quoted.join(", "))
        }
    };
    let do_nothing = obj.get("on_conflict").and_then(Value::as_str) == Some("do_nothing");
    Ok(InsertJob {
        table,
        columns,
        rows,
        returning,
        do_nothing,
    })
}

const IDENT_RULE: &str = "1-63 characters: letters, digits, '_' or '$', not starting with a digit (taken literally, as if quoted: `Users` and `users` differ)";

/// Whether `s` is an identifier this connector accepts. Anything that could end a quoted
/// identifier or start another token (quotes, dots, spaces, semicolons…) is refused outright.
fn valid_ident(s: &str) -> bool {
    let mut chars = s.chars();
    (1..=MAX_IDENT).contains(&s.len())
        && chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// `"name"`, with any quote doubled (none pass [`valid_ident`]; this is a second line of defence).
fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `table` or `schema.table`, validated and quoted.
fn qualified_table(raw: &str) -> Option<String> {
    let parts: Vec<&str> = raw.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| valid_ident(p)) {
        return None;
    }
    Some(
        parts
            .iter()
            .map(|p| quote_ident(p))
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A refused name, quoted and cut short for messages.
fn shown_ident(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("'{cut}…'")
    } else {
        format!("'{cut}'")
    }
}

/// A number of seconds or a duration string: "500ms", "10s", "2m".
fn parse_timeout(call: &Call<'_>, value: &Value) -> Result<Duration, ActionError> {
    const HINT: &str =
        "a number of seconds or a duration string such as \"500ms\", \"10s\" or \"2m\"";
    let secs = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => duration_secs(s),
        other => {
            return Err(call.bad_input("timeout", format!("must be {HINT}, got {}", kind(other))));
        }
    };
    let Some(secs) = secs.filter(|s| s.is_finite()) else {
        return Err(call.bad_input("timeout", format!("must be {HINT}, got {value}")));
    };
    if secs < 0.001 {
        return Err(call.bad_input("timeout", format!("must be at least 1ms, got {value}")));
    }
    if secs > MAX_TIMEOUT.as_secs_f64() {
        return Err(call.bad_input(
            "timeout",
            format!(
                "must be at most {} seconds, got {value}",
                MAX_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(Duration::from_millis((secs * 1000.0).round() as u64))
}

fn duration_secs(raw: &str) -> Option<f64> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(number * scale)
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

// ---------------------------------------------------------------------------------------------
// Credential and connection
// ---------------------------------------------------------------------------------------------

/// Where to connect, from the credential.
struct Target {
    host: String,
    port: u16,
    database: String,
    user: String,
    password: String,
}

impl Target {
    fn from_credential(call: &Call<'_>) -> Result<Target, ActionError> {
        let c = &call.credential;
        let given = |f: &str| c.values.get(f).is_some_and(|v| !v.expose().is_empty());
        let bad = |field: &str, why: String| {
            ActionError::permanent(format!(
                "{}: credential '{}': `{field}` {why}",
                call.name, c.name
            ))
        };
        let separate = ["host", "port", "database", "user", "password", "sslmode"];
        if given("url") {
            if let Some(f) = separate.iter().find(|f| given(f)) {
                return Err(bad(
                    "url",
                    format!(
                        "is set together with `{f}`; set either `url` alone or the separate fields (`host`, `port`, `database`, `user`, `password`), not both"
                    ),
                ));
            }
            return Target::from_url(call, c.get("url").unwrap_or_default());
        }
        if !given("host") {
            return Err(ActionError::permanent(format!(
                "{}: credential '{}' has neither `url` nor `host`; set `url` (postgres://USER:PASSWORD@HOST:PORT/DATABASE) or `host`, `database`, `user` and `password` with `weft credentials set {} --connector {} --value url=…`",
                call.name, c.name, c.name, c.manifest.name
            )));
        }
        let host = c.require("host")?.trim().to_owned();
        let port_raw = c.get("port").unwrap_or("5432").trim();
        let port = parse_port(port_raw)
            .ok_or_else(|| bad("port", format!("'{port_raw}' is not a TCP port (1-65535)")))?;
        check_sslmode(call, c.get("sslmode").unwrap_or("disable"))?;
        let target = Target {
            host,
            port,
            database: c.require("database")?.to_owned(),
            user: c.require("user")?.to_owned(),
            password: c.get("password").unwrap_or_default().to_owned(),
        };
        target.check_host(call, "host")?;
        Ok(target)
    }

    /// Parses `postgres://USER:PASSWORD@HOST:PORT/DATABASE[?sslmode=disable]`. Messages never
    /// quote the URL (it holds the password).
    fn from_url(call: &Call<'_>, raw: &str) -> Result<Target, ActionError> {
        let c = &call.credential;
        let bad = |why: &str| {
            ActionError::permanent(format!(
                "{}: credential '{}': `url` {why}; the form is postgres://USER:PASSWORD@HOST:PORT/DATABASE",
                call.name, c.name
            ))
        };
        let url = Url::parse(raw.trim()).map_err(|_| bad("is not a URL"))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(bad("must start with postgres:// or postgresql://"));
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => return Err(bad("has no host")),
        };
        let decode = |s: &str| {
            percent_decode(s)
                .ok_or_else(|| bad("holds a badly percent-encoded user, password or database"))
        };
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(bad("has no user name"));
        }
        let password = decode(url.password().unwrap_or_default())?;
        let database = decode(url.path().trim_start_matches('/'))?;
        if database.is_empty() || database.contains('/') {
            return Err(bad("has no database name after the host"));
        }
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => check_sslmode(call, &value)?,
                other => {
                    return Err(bad(&format!(
                        "has the parameter `{}`, which is not supported (only `sslmode`)",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            }
        }
        let target = Target {
            host: host.to_owned(),
            port: url.port().unwrap_or(5432),
            database,
            user,
            password,
        };
        target.check_host(call, "url")?;
        Ok(target)
    }

    /// A host name or IP address; never a Unix socket path or a host list.
    fn check_host(&self, call: &Call<'_>, field: &str) -> Result<(), ActionError> {
        let ok = !self.host.is_empty()
            && self.host.len() <= 253
            && self
                .host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if ok {
            Ok(())
        } else {
            Err(ActionError::permanent(format!(
                "{}: credential '{}': `{field}` must name one host: a DNS name or an IP address (not a socket path or a list of hosts)",
                call.name, call.credential.name
            )))
        }
    }

    fn shown(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn options(&self, ip: IpAddr) -> PgConnectOptions {
        // Every field that `new_without_pgpass` may take from the environment is set here.
        PgConnectOptions::new_without_pgpass()
            .host(&ip.to_string())
            .port(self.port)
            .username(&self.user)
            .password(&self.password)
            .database(&self.database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("weft")
    }
}

fn parse_port(raw: &str) -> Option<u16> {
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

fn check_sslmode(call: &Call<'_>, mode: &str) -> Result<(), ActionError> {
    if mode.trim().eq_ignore_ascii_case("disable") {
        return Ok(());
    }
    Err(ActionError::permanent(format!(
        "{}: credential '{}': sslmode '{}' is not supported yet: this version connects without TLS (sslmode=disable), so use it only on a trusted network, or wait for TLS support",
        call.name,
        call.credential.name,
        mode.chars().take(20).collect::<String>()
    )))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Resolves the host, keeps the addresses the policy permits and connects to them in turn.
async fn connect(
    call: &Call<'_>,
    policy: &NetPolicy,
    target: &Target,
    budget: Duration,
) -> Result<PgConnection, ActionError> {
    let deadline = Instant::now() + budget;
    let ctx = Ctx {
        call,
        target,
        timeout: budget,
    };
    let timed_out = || {
        ActionError::retryable(format!(
            "{}: connecting to PostgreSQL at {} timed out after {}; check `host` and `port` and that the server is reachable (the step can be retried)",
            call.name,
            target.shown(),
            human(budget)
        ))
    };
    let allowed = permitted_addresses(call, policy, &target.host, target.port, budget)
        .await
        .map_err(|e| e.unwrap_or_else(timed_out))?;
    let mut last = None;
    for ip in allowed {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let options = target.options(ip);
        match tokio::time::timeout(left, PgConnection::connect_with(&options)).await {
            Ok(Ok(conn)) => return Ok(conn),
            // Another address may answer.
            Ok(Err(sqlx::Error::Io(e))) => last = Some(ctx.io_error(&e, ip, Phase::Connect)),
            Ok(Err(e)) => return Err(ctx.classify(e, Phase::Connect)),
            Err(_) => last = Some(timed_out()),
        }
    }
    Err(last.unwrap_or_else(timed_out))
}

async fn begin(conn: &mut PgConnection, timeout: Duration) -> Result<(), Failure> {
    let ms = timeout.as_millis().max(1);
    // `ms` is a number computed here; nothing from the input reaches this text.
    let sql = format!("BEGIN; SET LOCAL statement_timeout = {ms}");
    sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------------------------

/// Why an action's statements failed: PostgreSQL (or the driver), or a check of ours.
enum Failure {
    Sql(sqlx::Error),
    Action(ActionError),
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Sql(e)
    }
}

impl From<ActionError> for Failure {
    fn from(e: ActionError) -> Self {
        Failure::Action(e)
    }
}

async fn run_query(conn: &mut PgConnection, job: &QueryJob<'_>) -> Result<Value, Failure> {
    let name = "postgres.query";
    let stmt = (&mut *conn)
        .prepare_with(AssertSqlSafe(job.sql.to_owned()).into_sql_str(), &[])
        .await?;
    let types = param_types(&stmt);
    if types.len() != job.params.len() {
        let uses = match types.len() {
            0 => "no parameters".to_owned(),
            1 => "one parameter ($1)".to_owned(),
            n => format!("{n} parameters ($1 to ${n})"),
        };
        return Err(ActionError::permanent(format!(
            "{name}: input `params` has {} values but the SQL uses {uses}; give one value per parameter, in order",
            job.params.len()
        ))
        .into());
    }
    let mut args = PgArguments::default();
    for (i, (ty, value)) in types.iter().zip(job.params).enumerate() {
        let n = i + 1;
        let param = bind(ty, value).map_err(|e| {
            ActionError::permanent(match e {
                BindError::Value(why) => format!("{name}: input `params[{i}]` (${n}) {why}"),
                BindError::Unsupported(t) => format!(
                    "{name}: input `params[{i}]`: PostgreSQL expects {t} for ${n}, which cannot be bound from JSON yet; cast the parameter in the SQL, e.g. `${n}::text::{t}`"
                ),
            })
        })?;
        args.add(param).map_err(sqlx::Error::Encode)?;
    }
    let plan = column_plan(name, &stmt)?;
    let out = fetch(name, conn, &stmt, args, &plan, Some(job.max_rows)).await?;
    let columns: Vec<Value> = plan
        .iter()
        .map(|c| json!({"name": c.key, "type": c.type_name}))
        .collect();
    Ok(json!({
        "rows": out.rows,
        "row_count": out.count,
        "truncated": out.truncated,
        "columns": columns,
    }))
}

async fn run_insert(conn: &mut PgConnection, job: &InsertJob<'_>) -> Result<Value, Failure> {
    let name = "postgres.insert";
    let per_statement = (MAX_PARAMS / job.columns.len()).max(1);
    let mut inserted: u64 = 0;
    let mut returned = Vec::new();
    let mut first_row = 0;
    for chunk in job.rows.chunks(per_statement) {
        let (sql, cells) = insert_sql(job, chunk, first_row);
        let stmt = (&mut *conn)
            .prepare_with(AssertSqlSafe(sql).into_sql_str(), &[])
            .await?;
        let types = param_types(&stmt);
        let mut args = PgArguments::default();
        for (ty, (row, column, value)) in types.iter().zip(&cells) {
            let param = bind(ty, value).map_err(|e| {
                ActionError::permanent(match e {
                    BindError::Value(why) => format!("{name}: input `rows[{row}].{column}` {why}"),
                    BindError::Unsupported(t) => format!(
                        "{name}: input `rows[{row}].{column}`: column `{column}` has type {t}, which cannot be bound from JSON yet; insert it with `postgres.query` and a cast, e.g. `INSERT … VALUES ($1::text::{t})`"
                    ),
                })
            })?;
            args.add(param).map_err(sqlx::Error::Encode)?;
        }
        let plan = column_plan(name, &stmt)?;
        let out = fetch(name, conn, &stmt, args, &plan, None).await?;
        inserted += out.affected;
        returned.extend(out.rows);
        first_row += chunk.len();
    }
    Ok(json!({"inserted": inserted, "rows": returned}))
}

/// `INSERT INTO t (cols) VALUES ($1, DEFAULT), …`: a key a row lacks takes the column's default;
/// a key given as `null` inserts NULL. Returns the SQL and, per parameter, its row, column and
/// value.
fn insert_sql<'j>(
    job: &'j InsertJob<'_>,
    chunk: &[&'j Map<String, Value>],
    first_row: usize,
) -> (String, Vec<(usize, &'j str, &'j Value)>) {
    let cols: Vec<String> = job.columns.iter().map(|c| quote_ident(c)).collect();
    let mut sql = format!("INSERT INTO {} ({}) VALUES ", job.table, cols.join(", "));
    let mut cells = Vec::new();
    for (r, row) in chunk.iter().enumerate() {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (c, column) in job.columns.iter().enumerate() {
            if c > 0 {
                sql.push_str(", ");
            }
            match row.get(*column) {
                Some(value) => {
                    cells.push((first_row + r, *column, value));
                    sql.push_str(&format!("${}", cells.len()));
                }
                None => sql.push_str("DEFAULT"),
            }
        }
        sql.push(')');
    }
    if job.do_nothing {
        sql.push_str(" ON CONFLICT DO NOTHING");
    }
    sql.push_str(&job.returning);
    (sql, cells)
}

fn param_types(stmt: &PgStatement) -> Vec<PgTypeInfo> {
    match stmt.parameters() {
        Some(Either::Left(types)) => types.to_vec(),
        _ => Vec::new(),
    }
}

/// How one result column becomes a JSON property.
struct ColumnPlan {
    key: String,
    type_name: String,
    codec: Codec,
}

/// Decides every column's conversion before the statement runs, so an unsupported type is
/// refused without side effects.
fn column_plan(name: &str, stmt: &PgStatement) -> Result<Vec<ColumnPlan>, ActionError> {
    let mut plan: Vec<ColumnPlan> = Vec::new();
    for col in stmt.columns() {
        let ty = col.type_info();
        let type_name = type_name(ty);
        let Some(codec) = codec_for(ty) else {
            return Err(ActionError::permanent(format!(
                "{name}: column `{}` has type {type_name}, which cannot be returned as JSON yet; cast it in the SQL, e.g. `{}::text` (or `to_jsonb(…)` for composites and ranges)",
                col.name(),
                col.name()
            )));
        };
        // Duplicate names (`SELECT a.id, b.id`) get a suffix instead of overwriting each other.
        let mut key = col.name().to_owned();
        let mut n = 1;
        while plan.iter().any(|p| p.key == key) {
            n += 1;
            key = format!("{}_{n}", col.name());
        }
        plan.push(ColumnPlan {
            key,
            type_name,
            codec,
        });
    }
    Ok(plan)
}

struct Fetched {
    rows: Vec<Value>,
    /// Rows returned, or affected when the statement returns none.
    count: u64,
    affected: u64,
    truncated: bool,
}

/// Runs the prepared statement and converts its rows; with a limit, only up to `max_rows` rows
/// (and about [`MAX_RESPONSE_BYTES`] of them) are kept, the rest are read and counted.
async fn fetch(
    name: &str,
    conn: &mut PgConnection,
    stmt: &PgStatement,
    args: PgArguments,
    plan: &[ColumnPlan],
    max_rows: Option<usize>,
) -> Result<Fetched, Failure> {
    let mut rows = Vec::new();
    let mut seen: u64 = 0;
    let mut affected: u64 = 0;
    let mut bytes = 0usize;
    let mut full = false;
    // The statement and its command tag (`rows_affected`), as one stream.
    let mut stream = (&mut *conn).fetch_many(stmt.query_with(args));
    while let Some(item) = stream.try_next().await? {
        match item {
            Either::Left(done) => affected += done.rows_affected(),
            Either::Right(row) => {
                seen += 1;
                if full || max_rows.is_some_and(|m| rows.len() >= m) {
                    full = true;
                    continue;
                }
                let (value, size) = row_json(name, &row, plan)?;
                bytes += size;
                if max_rows.is_some() && bytes > MAX_RESPONSE_BYTES {
                    full = true;
                    continue;
                }
                rows.push(value);
            }
        }
    }
    let truncated = (rows.len() as u64) < seen;
    Ok(Fetched {
        rows,
        count: if seen > 0 { seen } else { affected },
        affected,
        truncated,
    })
}

fn row_json(name: &str, row: &PgRow, plan: &[ColumnPlan]) -> Result<(Value, usize), Failure> {
    let mut obj = Map::new();
    let mut size = 2;
    for (i, col) in plan.iter().enumerate() {
        let raw = row.try_get_raw(i)?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            let bytes = raw.as_bytes().map_err(sqlx::Error::Decode)?;
            size += bytes.len();
            decode(&col.codec, bytes).map_err(|why| {
                ActionError::permanent(format!(
                    "{name}: column `{}` ({}) could not be read: {why}",
                    col.key, col.type_name
                ))
            })?
        };
        size += col.key.len() + 8;
        obj.insert(col.key.clone(), value);
    }
    Ok((Value::Object(obj), size))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Statement,
}

struct Ctx<'a> {
    call: &'a Call<'a>,
    target: &'a Target,
    timeout: Duration,
}

impl Ctx<'_> {
    fn classify(&self, err: sqlx::Error, phase: Phase) -> ActionError {
        let name = &self.call.name;
        match err {
            sqlx::Error::Database(db) => self.database_error(db.as_ref()),
            sqlx::Error::Io(e) => {
                let ip = self.target.host.parse().ok();
                match ip {
                    Some(ip) => self.io_error(&e, ip, phase),
                    None => ActionError::retryable(format!(
                        "{name}: lost the connection to PostgreSQL at {}: {e}; the step can be retried (an insert may or may not have been committed if this happened while committing)",
                        self.target.shown()
                    )),
                }
            }
            sqlx::Error::Protocol(msg) => ActionError::permanent(format!(
                "{name}: the server at {} did not answer as PostgreSQL does ({}); check `host` and `port`",
                self.target.shown(),
                msg.chars().take(200).collect::<String>()
            )),
            sqlx::Error::Tls(e) => ActionError::permanent(format!(
                "{name}: TLS with the server at {} failed: {e}",
                self.target.shown()
            )),
            other => ActionError::permanent(format!("{name}: {other}")),
        }
    }

    fn io_error(&self, e: &std::io::Error, ip: IpAddr, phase: Phase) -> ActionError {
        let name = &self.call.name;
        let shown = self.target.shown();
        let at = if self.target.host == ip.to_string() {
            shown
        } else {
            format!("{shown} ({ip})")
        };
        match phase {
            Phase::Connect => ActionError::retryable(format!(
                "{name}: could not connect to PostgreSQL at {at}: {e}; check `host` and `port` and that the server is running (the step can be retried)"
            )),
            Phase::Statement => ActionError::retryable(format!(
                "{name}: lost the connection to PostgreSQL at {at}: {e}; the step can be retried (an insert may or may not have been committed if this happened while committing)"
            )),
        }
    }

    fn database_error(&self, db: &(dyn sqlx::error::DatabaseError + 'static)) -> ActionError {
        let name = &self.call.name;
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let pg = db.try_downcast_ref::<PgDatabaseError>();
        let mut output = Map::new();
        output.insert("sqlstate".into(), json!(code));
        output.insert("message".into(), json!(db.message()));
        let mut text = format!("{name}: PostgreSQL error {code}: {}", db.message());
        if let Some(pg) = pg {
            let fields = [
                ("detail", pg.detail()),
                ("hint", pg.hint()),
                ("schema", pg.schema()),
                ("table", pg.table()),
                ("column", pg.column()),
                ("constraint", pg.constraint()),
            ];
            for (key, value) in fields {
                if let Some(v) = value {
                    output.insert(key.into(), json!(v));
                }
            }
            if let Some(PgErrorPosition::Original(p)) = pg.position() {
                output.insert("position".into(), json!(p));
                text.push_str(&format!(" (at character {p} of the SQL)"));
            }
            if let Some(d) = pg.detail() {
                text.push_str(&format!(". {d}"));
            }
            if let Some(h) = pg.hint() {
                text.push_str(&format!(" Hint: {h}"));
            }
        }
        let class = code.get(..2).unwrap_or_default();
        let retryable = matches!(class, "08" | "53" | "58")
            || matches!(
                code.as_str(),
                "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "57014"
            );
        let advice = match (class, code.as_str()) {
            (_, "57014") => format!(
                "the statement ran longer than `timeout` ({}) or was cancelled; the transaction was rolled back, so nothing was committed and the step can be retried; raise `timeout` (at most {}s) or make the statement faster",
                human(self.timeout),
                MAX_TIMEOUT.as_secs()
            ),
            (_, "53300") => "the server has no free connection slots; the step will be retried".into(),
            (_, "40001" | "40P01") => {
                "the transaction was rolled back; the step can be retried".into()
            }
            ("28", _) => format!(
                "check the user and password of credential '{}'",
                self.call.credential.name
            ),
            (_, "3D000") => format!(
                "check the database name in credential '{}'",
                self.call.credential.name
            ),
            (_, "42501") => {
                "grant the credential's role the privilege, or use another role".into()
            }
            ("42", _) => "fix the SQL, table or column names".into(),
            ("23", _) => "the data breaks a constraint; to make retried inserts safe, use a unique key with `on_conflict: \"do_nothing\"`".into(),
            _ if retryable => "the step can be retried".into(),
            _ => "retrying will not help".into(),
        };
        text.push_str(&format!("; {advice}"));
        if code == "53300" {
            output.insert("rate_limited".into(), Value::Bool(true));
        }
        let output = Some(Value::Object(output));
        if retryable {
            ActionError::Retryable {
                message: text,
                retry_after: None,
                output,
            }
        } else {
            ActionError::Permanent {
                message: text,
                output,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON ↔ PostgreSQL binary format
// ---------------------------------------------------------------------------------------------

/// A conversion between JSON and one PostgreSQL type's binary format.
#[derive(Debug, Clone, PartialEq)]
enum Codec {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// Text, varchar, bpchar, name, xml, citext, enums, `"char"`, unknown.
    Text,
    Json,
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Void,
    Array {
        elem: Box<Codec>,
        elem_oid: u32,
    },
}

/// A built-in scalar type by OID: its name and conversion.
fn scalar(oid: u32) -> Option<(&'static str, Codec)> {
    Some(match oid {
        16 => ("bool", Codec::Bool),
        17 => ("bytea", Codec::Bytea),
        18 => ("\"char\"", Codec::Text),
        19 => ("name", Codec::Text),
        20 => ("int8", Codec::Int8),
        21 => ("int2", Codec::Int2),
        23 => ("int4", Codec::Int4),
        25 => ("text", Codec::Text),
        26 => ("oid", Codec::Oid),
        114 => ("json", Codec::Json),
        142 => ("xml", Codec::Text),
        700 => ("float4", Codec::Float4),
        701 => ("float8", Codec::Float8),
        705 => ("unknown", Codec::Text),
        1042 => ("bpchar", Codec::Text),
        1043 => ("varchar", Codec::Text),
        1082 => ("date", Codec::Date),
        1083 => ("time", Codec::Time),
        1114 => ("timestamp", Codec::Timestamp),
        1184 => ("timestamptz", Codec::Timestamptz),
        1700 => ("numeric", Codec::Numeric),
        2278 => ("void", Codec::Void),
        2950 => ("uuid", Codec::Uuid),
        3802 => ("jsonb", Codec::Jsonb),
        _ => return None,
    })
}

fn oid_of(ty: &PgTypeInfo) -> Option<u32> {
    ty.oid().map(|o| o.0)
}

/// Whether sqlx knows the type well enough to ask for its kind (an unresolved OID has none).
fn resolved(ty: &PgTypeInfo) -> bool {
    ty.name() != "?"
}

fn codec_for(ty: &PgTypeInfo) -> Option<Codec> {
    codec_depth(ty, 0)
}

fn codec_depth(ty: &PgTypeInfo, depth: usize) -> Option<Codec> {
    if depth > 8 {
        return None;
    }
    if let Some((_, codec)) = oid_of(ty).and_then(scalar) {
        return Some(codec);
    }
    if !resolved(ty) {
        return None;
    }
    match ty.kind() {
        PgTypeKind::Domain(base) => codec_depth(base, depth + 1),
        PgTypeKind::Enum(_) => Some(Codec::Text),
        PgTypeKind::Array(elem) => {
            let elem_oid = oid_of(elem)?;
            match codec_depth(elem, depth + 1)? {
                // Arrays of arrays are just more dimensions; void has no array.
                Codec::Array { .. } | Codec::Void => None,
                codec => Some(Codec::Array {
                    elem: Box::new(codec),
                    elem_oid,
                }),
            }
        }
        // citext is an extension type; its binary format is text's.
        PgTypeKind::Simple if ty.name().eq_ignore_ascii_case("citext") => Some(Codec::Text),
        _ => None,
    }
}

/// The type's PostgreSQL name, e.g. `int4`, `timestamptz`, `text[]`, or a custom type's name.
fn type_name(ty: &PgTypeInfo) -> String {
    if let Some((name, _)) = oid_of(ty).and_then(scalar) {
        return name.to_owned();
    }
    if resolved(ty)
        && let PgTypeKind::Array(elem) = ty.kind()
    {
        return format!("{}[]", type_name(elem));
    }
    let n = ty.name();
    if n == "?" {
        format!("with OID {}", oid_of(ty).unwrap_or_default())
    } else if n == n.to_ascii_uppercase() {
        // sqlx spells built-in types in capitals; PostgreSQL's own names are lowercase.
        n.to_ascii_lowercase()
    } else {
        n.to_owned()
    }
}

/// One bound parameter: its type (as PostgreSQL described it) and its binary value.
struct Param {
    ty: PgTypeInfo,
    bytes: Option<Vec<u8>>,
}

impl Type<Postgres> for Param {
    fn type_info() -> PgTypeInfo {
        // Only used when `produces` says nothing; it always does.
        PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl Encode<'_, Postgres> for Param {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match &self.bytes {
            Some(b) => {
                buf.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(self.ty.clone())
    }

    fn size_hint(&self) -> usize {
        self.bytes.as_ref().map_or(0, Vec::len)
    }
}

/// Why a value could not be bound.
enum BindError {
    /// PostgreSQL expects a type this connector cannot convert JSON to (its name).
    Unsupported(String),
    /// The value does not fit the type; completes a sentence ("… must be …").
    Value(String),
}

/// The parameter for `value` where PostgreSQL expects `ty`.
fn bind(ty: &PgTypeInfo, value: &Value) -> Result<Param, BindError> {
    let ty_name = type_name(ty);
    let Some(codec) = codec_for(ty) else {
        return Err(BindError::Unsupported(ty_name));
    };
    let bytes = encode(&codec, value)
        .map_err(|why| BindError::Value(format!("{why} (PostgreSQL type {ty_name})")))?;
    Ok(Param {
        ty: ty.clone(),
        bytes,
    })
}

/// `None` for JSON `null` (SQL NULL).
fn encode(codec: &Codec, v: &Value) -> Result<Option<Vec<u8>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let wrong = |want: &str| format!("must be {want}, got {}", kind(v));
    let text = || v.as_str().ok_or_else(|| wrong("a string"));
    let bytes = match codec {
        Codec::Bool => match v {
            Value::Bool(b) => vec![u8::from(*b)],
            Value::String(s) if s.eq_ignore_ascii_case("true") => vec![1],
            Value::String(s) if s.eq_ignore_ascii_case("false") => vec![0],
            _ => return Err(wrong("true or false")),
        },
        Codec::Int2 | Codec::Int4 | Codec::Int8 | Codec::Oid => {
            let n = match v {
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => as_integer(v),
            }
            .ok_or_else(|| wrong("an integer"))?;
            let range = || format!("must fit the column's integer type, got {n}");
            match codec {
                Codec::Int2 => i16::try_from(n)
                    .map_err(|_| range())?
                    .to_be_bytes()
                    .to_vec(),
                Codec::Int4 => i32::try_from(n)
                    .map_err(|_| range())?
                    .to_be_bytes()
                    .to_vec(),
                Codec::Oid => u32::try_from(n)
                    .map_err(|_| range())?
                    .to_be_bytes()
                    .to_vec(),
                _ => n.to_be_bytes().to_vec(),
            }
        }
        Codec::Float4 | Codec::Float8 => {
            let f = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| wrong("a number"))?;
            if *codec == Codec::Float4 {
                let g = f as f32;
                if f.is_finite() && !g.is_finite() {
                    return Err(format!("is out of range for float4: {f}"));
                }
                g.to_be_bytes().to_vec()
            } else {
                f.to_be_bytes().to_vec()
            }
        }
        Codec::Numeric => {
            let s = match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => return Err(wrong("a number or a decimal string")),
            };
            numeric_bytes(&s).ok_or_else(|| format!("must be a decimal number, got {v}"))?
        }
        Codec::Text => match v {
            Value::String(s) => s.as_bytes().to_vec(),
            Value::Number(_) | Value::Bool(_) => v.to_string().into_bytes(),
            _ => serde_json::to_vec(v).map_err(|e| e.to_string())?,
        },
        Codec::Json => serde_json::to_vec(v).map_err(|e| e.to_string())?,
        Codec::Jsonb => {
            let mut b = vec![1];
            b.extend(serde_json::to_vec(v).map_err(|e| e.to_string())?);
            b
        }
        Codec::Bytea => {
            let s = text()?;
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim()))
                .map_err(|_| "must be base64 (bytea values are base64 in JSON)".to_owned())?
        }
        Codec::Uuid => {
            let s = text()?;
            parse_uuid(s)
                .ok_or_else(|| format!("must be a UUID, got {v}"))?
                .to_vec()
        }
        Codec::Date => {
            let s = text()?.trim();
            let days = match s {
                "infinity" => i32::MAX,
                "-infinity" => i32::MIN,
                _ => {
                    let d = parse_date(s)
                        .ok_or_else(|| format!("must be a date YYYY-MM-DD, got {v}"))?;
                    i32::try_from(d - PG_EPOCH_DAYS).map_err(|_| format!("is out of range: {v}"))?
                }
            };
            days.to_be_bytes().to_vec()
        }
        Codec::Time => {
            let s = text()?.trim();
            parse_time(s)
                .ok_or_else(|| format!("must be a time HH:MM[:SS[.ffffff]], got {v}"))?
                .to_be_bytes()
                .to_vec()
        }
        Codec::Timestamp | Codec::Timestamptz => {
            let s = text()?.trim();
            let micros = match s {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                _ => parse_timestamp(s).ok_or_else(|| {
                    format!("must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z, got {v}")
                })?,
            };
            micros.to_be_bytes().to_vec()
        }
        Codec::Void => return Err("cannot be bound (void)".into()),
        Codec::Array { elem, elem_oid } => {
            let Value::Array(items) = v else {
                return Err(wrong("an array"));
            };
            encode_array(elem, *elem_oid, items)?
        }
    };
    Ok(Some(bytes))
}

fn encode_array(elem: &Codec, elem_oid: u32, items: &[Value]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let has_null = items.iter().any(Value::is_null);
    let ndim: i32 = if items.is_empty() { 0 } else { 1 };
    out.extend(ndim.to_be_bytes());
    out.extend(i32::from(has_null).to_be_bytes());
    out.extend(elem_oid.to_be_bytes());
    if !items.is_empty() {
        let len = i32::try_from(items.len()).map_err(|_| "has too many items".to_owned())?;
        out.extend(len.to_be_bytes());
        out.extend(1i32.to_be_bytes());
    }
    for (i, item) in items.iter().enumerate() {
        if item.is_array() && !matches!(elem, Codec::Json | Codec::Jsonb) {
            return Err("is a nested array; only one-dimensional arrays can be bound".into());
        }
        match encode(elem, item).map_err(|why| format!("item [{i}] {why}"))? {
            None => out.extend((-1i32).to_be_bytes()),
            Some(b) => {
                let len = i32::try_from(b.len()).map_err(|_| format!("item [{i}] is too large"))?;
                out.extend(len.to_be_bytes());
                out.extend(b);
            }
        }
    }
    Ok(out)
}

fn be<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => json!("NaN"),
        None if f > 0.0 => json!("Infinity"),
        None => json!("-Infinity"),
    }
}

fn decode(codec: &Codec, b: &[u8]) -> Result<Value, String> {
    Ok(match codec {
        Codec::Bool => Value::Bool(be::<1>(b)?[0] != 0),
        Codec::Int2 => json!(i16::from_be_bytes(be(b)?)),
        Codec::Int4 => json!(i32::from_be_bytes(be(b)?)),
        Codec::Int8 => json!(i64::from_be_bytes(be(b)?)),
        Codec::Oid => json!(u32::from_be_bytes(be(b)?)),
        // The shortest decimal that reads back as the same f32, not its widened f64.
        Codec::Float4 => {
            let f = f32::from_be_bytes(be(b)?);
            float(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
        }
        Codec::Float8 => float(f64::from_be_bytes(be(b)?)),
        Codec::Numeric => Value::String(numeric_text(b)?),
        Codec::Text => Value::String(String::from_utf8_lossy(b).into_owned()),
        Codec::Json => json_text(b),
        Codec::Jsonb => match b.split_first() {
            Some((1, rest)) => json_text(rest),
            _ => return Err("unknown jsonb format version".into()),
        },
        Codec::Bytea => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Codec::Uuid => Value::String(format_uuid(&be::<16>(b)?)),
        Codec::Date => match i32::from_be_bytes(be(b)?) {
            i32::MAX => json!("infinity"),
            i32::MIN => json!("-infinity"),
            d => Value::String(format_date(i64::from(d) + PG_EPOCH_DAYS)),
        },
        Codec::Time => Value::String(format_time(i64::from_be_bytes(be(b)?))),
        Codec::Timestamp | Codec::Timestamptz => match i64::from_be_bytes(be(b)?) {
            i64::MAX => json!("infinity"),
            i64::MIN => json!("-infinity"),
            t => {
                let days = t.div_euclid(MICROS_PER_DAY) + PG_EPOCH_DAYS;
                let mut s = format_date(days);
                s.push('T');
                s.push_str(&format_time(t.rem_euclid(MICROS_PER_DAY)));
                if *codec == Codec::Timestamptz {
                    s.push('Z');
                }
                Value::String(s)
            }
        },
        Codec::Void => Value::Null,
        Codec::Array { elem, .. } => decode_array(elem, b)?,
    })
}

fn json_text(b: &[u8]) -> Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
}

/// Reads PostgreSQL's binary array: dimensions, then the items in row-major order.
fn decode_array(elem: &Codec, b: &[u8]) -> Result<Value, String> {
    let mut r = Reader(b);
    let ndim = r.i32()?;
    let _has_null = r.i32()?;
    let _elem_oid = r.i32()?;
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    if !(1..=6).contains(&ndim) {
        return Err(format!("array with {ndim} dimensions"));
    }
    let mut dims = Vec::new();
    for _ in 0..ndim {
        let len = usize::try_from(r.i32()?).map_err(|_| "negative array length".to_owned())?;
        let _lower = r.i32()?;
        dims.push(len);
    }
    let mut items = Vec::new();
    let total: usize = dims.iter().product();
    for _ in 0..total {
        let len = r.i32()?;
        if len < 0 {
            items.push(Value::Null);
        } else {
            let len = usize::try_from(len).map_err(|_| "bad item length".to_owned())?;
            items.push(decode(elem, r.take(len)?)?);
        }
    }
    Ok(nest(&dims, &mut items.into_iter()))
}

fn nest(dims: &[usize], items: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => items.next().unwrap_or(Value::Null),
        Some((n, [])) => Value::Array(items.take(*n).collect()),
        Some((n, rest)) => Value::Array((0..*n).map(|_| nest(rest, items)).collect()),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("value shorter than its header says".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(be(self.take(4)?)?))
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(be(self.take(2)?)?))
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(be(self.take(2)?)?))
    }
}

// numeric: int16 ndigits, int16 weight, uint16 sign, uint16 dscale, then ndigits base-10000
// digits; the value is sum(digit[i] * 10000^(weight - i)), shown with dscale decimals.
const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// Longest numeric text accepted as input.
const MAX_NUMERIC_TEXT: usize = 1000;

fn numeric_text(b: &[u8]) -> Result<String, String> {
    let mut r = Reader(b);
    let ndigits = usize::try_from(r.i16()?).map_err(|_| "bad numeric".to_owned())?;
    let weight = i64::from(r.i16()?);
    let sign = r.u16()?;
    let dscale = usize::from(r.u16()?);
    match sign {
        NUMERIC_NAN => return Ok("NaN".into()),
        NUMERIC_PINF => return Ok("Infinity".into()),
        NUMERIC_NINF => return Ok("-Infinity".into()),
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for _ in 0..ndigits {
        digits.push(r.i16()?);
    }
    let group = |idx: i64| -> i16 {
        usize::try_from(idx)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == NUMERIC_NEG && digits.iter().any(|d| *d != 0) {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for idx in 0..=weight {
            if idx == 0 {
                out.push_str(&group(idx).to_string());
            } else {
                out.push_str(&format!("{:04}", group(idx)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let groups = dscale.div_ceil(4) as i64;
        for k in 1..=groups {
            frac.push_str(&format!("{:04}", group(weight + k)));
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

fn numeric_bytes(raw: &str) -> Option<Vec<u8>> {
    let s = raw.trim();
    if s.is_empty() || s.len() > MAX_NUMERIC_TEXT {
        return None;
    }
    let header = |sign: u16| -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(0i16.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(sign.to_be_bytes());
        b.extend(0u16.to_be_bytes());
        b
    };
    match s.to_ascii_lowercase().as_str() {
        "nan" => return Some(header(NUMERIC_NAN)),
        "infinity" | "+infinity" | "inf" => return Some(header(NUMERIC_PINF)),
        "-infinity" | "-inf" => return Some(header(NUMERIC_NINF)),
        _ => {}
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    if exp.unsigned_abs() > MAX_NUMERIC_TEXT as u64 {
        return None;
    }
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let all: String = format!("{int}{frac}");
    let point = int.len() as i64 + exp;
    let (int_part, frac_part) = if point <= 0 {
        (
            String::new(),
            format!("{}{all}", "0".repeat(point.unsigned_abs() as usize)),
        )
    } else if point as usize >= all.len() {
        (
            format!("{all}{}", "0".repeat(point as usize - all.len())),
            String::new(),
        )
    } else {
        (
            all[..point as usize].to_owned(),
            all[point as usize..].to_owned(),
        )
    };
    let dscale = u16::try_from(frac_part.len())
        .ok()
        .filter(|d| *d <= 16383)?;
    let int_padded = format!("{}{int_part}", "0".repeat((4 - int_part.len() % 4) % 4));
    let frac_padded = format!("{frac_part}{}", "0".repeat((4 - frac_part.len() % 4) % 4));
    let to_groups = |s: &str| -> Vec<i16> {
        s.as_bytes()
            .chunks(4)
            .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
            .collect()
    };
    let int_groups = to_groups(&int_padded);
    let mut groups = int_groups.clone();
    groups.extend(to_groups(&frac_padded));
    let mut weight = int_groups.len() as i64 - 1;
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i64;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let ndigits = i16::try_from(groups.len()).ok()?;
    let weight = i16::try_from(weight).ok()?;
    let sign = if negative && !groups.is_empty() {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    };
    let mut b = Vec::with_capacity(8 + groups.len() * 2);
    b.extend(ndigits.to_be_bytes());
    b.extend(weight.to_be_bytes());
    b.extend(sign.to_be_bytes());
    b.extend(dscale.to_be_bytes());
    for g in groups {
        b.extend(g.to_be_bytes());
    }
    Some(b)
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let hex_digits: String = s.chars().filter(|c| *c != '-').collect();
    if hex_digits.len() != 32 || s.len() - hex_digits.len() > 4 {
        return None;
    }
    hex::decode(hex_digits).ok()?.try_into().ok()
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_DAYS: i64 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!("{y:+}-{m:02}-{d:02}")
    }
}

fn format_time(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut s = format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` as days since 1970-01-01.
fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, '-');
    let y = digits(parts.next()?, 4)?;
    let m = digits(parts.next()?, 2)?;
    let d = digits(parts.next()?, 2)?;
    let y = i64::from(y);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// `HH:MM[:SS[.ffffff]]` as microseconds since midnight (digits past microseconds are dropped).
fn parse_time(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut parts = hms.split(':');
    let h = digits(parts.next()?, 2)?;
    let m = digits(parts.next()?, 2)?;
    let sec = match parts.next() {
        Some(p) => digits(p, 2)?,
        None if frac.is_empty() => 0,
        None => return None,
    };
    if parts.next().is_some() || h > 23 || m > 59 || sec > 59 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (hms.len() != 8 && !frac.is_empty()) {
        return None;
    }
    let micros: i64 = format!("{:0<6}", frac.get(..6).unwrap_or(frac))
        .parse()
        .ok()?;
    Some((i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec)) * 1_000_000 + micros)
}

/// RFC 3339 (`T` or a space between date and time; `Z`, `±HH:MM`, `±HHMM`, `±HH` or nothing,
/// which means UTC) as microseconds since 2000-01-01T00:00:00Z. A bare date is midnight UTC.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let days = parse_date(date)?;
    let (time, offset_secs) = if rest.is_empty() {
        ("00:00", 0)
    } else if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (t, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = off[1..].replace(':', "");
        let (oh, om) = match off.len() {
            2 => (digits(&off, 2)?, 0),
            4 => (digits(&off[..2], 2)?, digits(&off[2..], 2)?),
            _ => return None,
        };
        if oh > 15 || om > 59 {
            return None;
        }
        (t, sign * i64::from(oh * 3600 + om * 60))
    } else {
        (rest, 0)
    };
    let micros = parse_time(time.trim_end())?;
    let total = (days - PG_EPOCH_DAYS)
        .checked_mul(MICROS_PER_DAY)?
        .checked_add(micros)?
        .checked_sub(offset_secs * 1_000_000)?;
    Some(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn numeric_roundtrip(s: &str) -> String {
        numeric_text(&numeric_bytes(s).unwrap()).unwrap()
    }

    #[test]
    fn numerics() {
        for (input, shown) in [
            ("0", "0"),
            ("12.5", "12.5"),
            ("-12.50", "-12.50"),
            ("0.0001", "0.0001"),
            ("100000", "100000"),
            ("123456789.123456789", "123456789.123456789"),
            ("1e5", "100000"),
            ("1.5E-3", "0.0015"),
            ("-0", "0"),
            ("0.000", "0.000"),
            ("99999999", "99999999"),
            ("NaN", "NaN"),
            ("-Infinity", "-Infinity"),
        ] {
            assert_eq!(numeric_roundtrip(input), shown, "{input}");
        }
        for bad in ["", "1.2.3", "abc", "1e", "--1", "1e99999", "."] {
            assert!(numeric_bytes(bad).is_none(), "{bad}");
        }
        // 12.5 as PostgreSQL sends it: ndigits 2, weight 0, positive, dscale 1, [12, 5000].
        let pg = [0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88];
        assert_eq!(numeric_bytes("12.5").unwrap(), pg);
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(days_from_civil(2000, 1, 1), PG_EPOCH_DAYS);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        for days in [-1_000_000, -1, 0, 59, 60, 10_957, 19_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_date(days_from_civil(2024, 2, 29)), "2024-02-29");
        assert!(parse_date("2023-02-29").is_none());
        assert!(parse_date("2024-13-01").is_none());
        let t = parse_timestamp("2024-05-01T12:30:15.25+02:00").unwrap();
        let u = parse_timestamp("2024-05-01 10:30:15.250000Z").unwrap();
        assert_eq!(t, u);
        assert_eq!(parse_timestamp("2000-01-01"), Some(0));
        assert_eq!(parse_timestamp("2000-01-01T00:00:01"), Some(1_000_000));
        assert_eq!(
            parse_timestamp("1999-12-31T23:59:59-0000"),
            Some(-1_000_000)
        );
        for bad in [
            "2024-05-01T25:00:00Z",
            "yesterday",
            "2024-5-1",
            "2024-05-01T12:00:00+99:00",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad}");
        }
        let v = decode(&Codec::Timestamptz, &u.to_be_bytes()).unwrap();
        assert_eq!(v, json!("2024-05-01T10:30:15.25Z"));
        let v = decode(&Codec::Timestamp, &(-1i64).to_be_bytes()).unwrap();
        assert_eq!(v, json!("1999-12-31T23:59:59.999999"));
        assert_eq!(parse_time("07:05"), Some(25_500_000_000));
        assert_eq!(format_time(25_500_000_001), "07:05:00.000001");
    }

    #[test]
    fn identifiers() {
        for ok in ["users", "_x", "Users", "a$1", "événements"] {
            assert!(valid_ident(ok), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a\"b",
            "a;b",
            "a.b",
            "x--",
            "a'b",
            &"x".repeat(64),
        ] {
            assert!(!valid_ident(bad), "{bad}");
        }
        assert_eq!(qualified_table("s.t").unwrap(), "\"s\".\"t\"");
        assert!(qualified_table("a.b.c").is_none());
        assert!(qualified_table("t\"; DROP TABLE x; --").is_none());
    }

    #[test]
    fn uuids_arrays_and_floats() {
        let u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(format_uuid(&parse_uuid(u).unwrap()), u);
        assert_eq!(
            format_uuid(&parse_uuid("{A0EEBC999C0B4EF8BB6D6BB9BD380A11}").unwrap()),
            u
        );
        assert!(parse_uuid("a0eebc99").is_none());
        let codec = Codec::Array {
            elem: Box::new(Codec::Int4),
            elem_oid: 23,
        };
        let b = encode(&codec, &json!([1, null, 3])).unwrap().unwrap();
        assert_eq!(decode(&codec, &b).unwrap(), json!([1, null, 3]));
        let b = encode(&codec, &json!([])).unwrap().unwrap();
        assert_eq!(decode(&codec, &b).unwrap(), json!([]));
        assert!(encode(&codec, &json!([[1]])).is_err());
        assert!(
            encode(&codec, &json!(["x"]))
                .unwrap_err()
                .contains("item [0]")
        );
        assert_eq!(
            decode(&Codec::Float4, &0.1f32.to_be_bytes()).unwrap(),
            json!(0.1)
        );
        assert_eq!(
            decode(&Codec::Float8, &f64::NAN.to_be_bytes()).unwrap(),
            json!("NaN")
        );
        assert!(encode(&Codec::Int2, &json!(40000)).is_err());
        assert_eq!(
            encode(&Codec::Int8, &json!("42")).unwrap().unwrap(),
            42i64.to_be_bytes()
        );
    }

    #[test]
    fn timeouts() {
        let values = weft_vault::SecretValues::new();
        let m = crate::manifest::find("postgres", None).unwrap();
        let call = Call::new(
            "query",
            Credential {
                name: "c",
                values: &values,
                manifest: m,
            },
        );
        let t = |v: Value| parse_timeout(&call, &v);
        assert_eq!(t(json!("200ms")).unwrap(), Duration::from_millis(200));
        assert_eq!(t(json!(1.5)).unwrap(), Duration::from_millis(1500));
        assert_eq!(t(json!("2m")).unwrap(), Duration::from_secs(120));
        for bad in [
            json!(0),
            json!("0.1ms"),
            json!("1d"),
            json!(301),
            json!(true),
        ] {
            let e = t(bad.clone()).unwrap_err();
            assert!(e.message().contains("`timeout`"), "{bad}: {e}");
        }
    }
}
