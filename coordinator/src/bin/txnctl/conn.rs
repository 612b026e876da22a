//! How txnctl reaches the services: one set of TLS settings and one admin token, taken from the
//! flags once, for every channel; a bounded connect and call deadline; and the translation of
//! a failed call into one line that says what went wrong (and, where it can tell, what to try),
//! instead of a gRPC status dump.

use std::time::Duration;

use txn_server::net::{AuthChannel, BearerToken, ClientTls, TlsArgs};

use crate::Res;
use crate::cli::Cli;

/// Time allowed to connect to a service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one call (a forced outcome asks every participant, so it gets room).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A channel to a service; every call carries the admin token when one is given.
pub type Ch = AuthChannel;

/// How txnctl reaches services: TLS settings and token, set once from the flags.
static CONN: std::sync::OnceLock<(ClientTls, BearerToken)> = std::sync::OnceLock::new();

pub fn setup_connections(cli: &Cli) -> Res<()> {
    if cli.tls_cert.is_some() != cli.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    if cli.tls_cert.is_some() && cli.tls_ca.is_none() {
        return Err("--tls-cert needs --tls-ca (the CA that signed the services)".into());
    }
    let tls = ClientTls::load(&TlsArgs {
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        tls_ca: cli.tls_ca.clone(),
    })
    .map_err(|e| format!("{e:#}"))?;
    let token = BearerToken::new(cli.token.as_deref().map(str::trim))
        .map_err(|e| format!("--token: {e}"))?;
    let _ = CONN.set((tls, token));
    Ok(())
}

/// Connects to the first of the comma-separated `urls` (several coordinators over one etcd
/// log) that answers, trying them in order from the `start`th; returns which one it was.
pub async fn connect_from(what: &str, urls: &str, start: usize) -> Res<(Ch, usize)> {
    let list: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if list.is_empty() {
        return Err(format!("{what}: no URL given"));
    }
    let mut errors = Vec::new();
    for (i, url) in list.iter().enumerate().skip(start) {
        match connect(what, url).await {
            Ok(ch) => return Ok((ch, i)),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// Connects to the first of the comma-separated `urls` that answers.
pub async fn connect_any(what: &str, urls: &str) -> Res<Ch> {
    Ok(connect_from(what, urls, 0).await?.0)
}

pub async fn connect(what: &str, url: &str) -> Res<Ch> {
    let (tls, token) = CONN.get_or_init(Default::default);
    let ep = tls
        .endpoint(what, url, CONNECT_TIMEOUT)
        .map_err(|_| {
            format!("{what}: {url:?} is not a valid URL (expected e.g. http://127.0.0.1:50051)")
        })?
        .timeout(CALL_TIMEOUT);
    let ch = ep
        .connect()
        .await
        .map_err(|e| format!("cannot reach {what} at {url}: {}", root_cause(&e)))?;
    probe(what, url, ch.clone()).await?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch,
        token.clone(),
    ))
}

/// Asks the service's health endpoint once, before any call that could change something, so
/// that a link that cannot carry gRPC at all (a plaintext client at a TLS server, something else
/// on the port) is reported as such: nothing was sent, so nothing ran. Without it, such a link
/// would fail the first real call midway, and a transfer would have to be reported as of unknown
/// outcome. An answer, or a status only a gRPC server sends, proves the link works; anything
/// the client's transport makes up (broken, cancelled, protocol error) does not.
async fn probe(what: &str, url: &str, ch: tonic::transport::Channel) -> Res<()> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(CONNECT_TIMEOUT);
    match health.check(req).await {
        Ok(_) => Ok(()),
        Err(s) if served_status(s.code()) => Ok(()),
        Err(s) if s.code() == tonic::Code::DeadlineExceeded => Err(format!(
            "{what} at {url} did not answer within {} s, so nothing was sent",
            CONNECT_TIMEOUT.as_secs()
        )),
        Err(s) => Err(format!(
            "{what} at {url} did not answer in gRPC ({}), so nothing was sent: does it need TLS \
             (--tls-ca, TXNCTL_TLS_CA), or is something else on that port?",
            s.message().lines().next().unwrap_or("")
        )),
    }
}

/// Statuses a gRPC server sends to a health check it cannot serve as asked; a client's
/// transport never makes them up.
fn served_status(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::NotFound
            | tonic::Code::Unimplemented
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
    )
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

pub fn status_err(s: tonic::Status) -> String {
    if s.code() == tonic::Code::Internal && s.message().contains("h2 protocol error") {
        return "the service did not answer in plaintext gRPC: does it need TLS (--tls-ca, \
                TXNCTL_TLS_CA)?"
            .into();
    }
    if s.code() == tonic::Code::Unknown && s.message().contains("transport error") {
        return "the connection broke mid-call (did the service crash?): the outcome is unknown; \
                check with txnctl txn list"
            .into();
    }
    let code = match s.code() {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::Unimplemented => "not supported",
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::ResourceExhausted => "overloaded",
        tonic::Code::AlreadyExists => "already exists",
        _ => "error",
    };
    format!("{code}: {}", s.message().lines().next().unwrap_or(""))
}
