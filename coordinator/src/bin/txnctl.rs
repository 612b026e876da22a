//! txnctl: the operator's command line for the coordinator and its participants. Finds stuck
//! transactions, shows why they are stuck, forces outcomes safely, retries on demand, and runs
//! transfers, reads and whole transactions by hand.
//!
//! Exit status: 0 on success, 2 for usage errors, 1 for everything else (one line on stderr).

use std::io::Read as _;
use std::time::Duration;

use clap::{Parser, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Deserialize;
use serde_json::{Value, json};
use txn_proto::pb::v1 as pb;
use txn_server::net::{AuthChannel, BearerToken, ClientTls, TlsArgs};

/// Time allowed to connect to a service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one call (a forced outcome asks every participant, so it gets room).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest transaction file `submit` reads.
const MAX_SUBMIT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "txnctl",
    version,
    about = "Operate a txnkit coordinator and its participants"
)]
struct Cli {
    /// The coordinator's URL.
    #[arg(
        long,
        global = true,
        env = "TXNCTL_COORDINATOR",
        default_value = "http://127.0.0.1:50051"
    )]
    coordinator: String,
    /// Print machine-readable JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Bearer token for operator calls, when the services require one.
    #[arg(long, global = true, env = "TXNCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) that signed the services' certificates: turns TLS on.
    #[arg(long, global = true, env = "TXNCTL_TLS_CA", value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for services that demand one (mutual TLS).
    #[arg(long, global = true, env = "TXNCTL_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "TXNCTL_TLS_KEY", value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Coordinator epoch and uptime, participants and their health, txn and saga counts.
    Status,
    /// Two-phase commit transactions: find, inspect, retry and settle stuck ones.
    #[command(subcommand)]
    Txn(TxnCmd),
    /// Sagas: list, inspect, retry parked compensations.
    #[command(subcommand)]
    Saga(SagaCmd),
    /// Participants, and the transactions each holds in doubt.
    #[command(subcommand)]
    Participant(ParticipantCmd),
    /// Move an amount between two accounts (accounts that do not exist yet hold 0).
    Transfer {
        /// Source account as PARTICIPANT/KEY, e.g. p1/alice.
        #[arg(long)]
        from: String,
        /// Destination account as PARTICIPANT/KEY.
        #[arg(long)]
        to: String,
        #[arg(long)]
        amount: i64,
        /// 2pc or saga.
        #[arg(long, default_value = "2pc")]
        protocol: String,
        /// Let the source go below zero (by default an overdraft aborts).
        #[arg(long)]
        allow_negative: bool,
        /// Idempotency key: running the same transfer again with the same key returns the
        /// first outcome instead of moving the money twice.
        #[arg(long)]
        client_txn_id: Option<String>,
    },
    /// Read accounts atomically through the coordinator (PARTICIPANT/KEY ...).
    Read {
        #[arg(required = true)]
        accounts: Vec<String>,
    },
    /// Run a transaction described as JSON, from FILE or - for standard input.
    Submit { file: String },
    /// Failpoints of services built with them (tests and the harness).
    #[command(subcommand)]
    Failpoint(FailpointCmd),
    /// Generate a throwaway CA and one certificate per node, for running a cluster with
    /// mutual TLS (not for production keys).
    Certs {
        /// Directory to write ca.pem and NAME.pem / NAME.key into.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Node names (each certificate is valid for localhost and 127.0.0.1, as server and
        /// client).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TxnCmd {
    /// Transactions in flight, committing, or in doubt at a participant.
    List {
        /// preparing, deciding, committing or in-doubt.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Decision, each participant's state and ack, retries and last error, forced outcome.
    Show { id: String },
    /// Re-drive now: re-send Commit, or Abort a txn the coordinator has no decision for.
    Retry { id: String },
    /// Force ABORT; refused after a durable commit decision unless --heuristic.
    Abort {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        heuristic: bool,
    },
    /// Force COMMIT; refused unless every participant voted YES, unless --heuristic.
    Commit {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        heuristic: bool,
    },
}

#[derive(Subcommand)]
enum SagaCmd {
    /// Sagas, most recently updated first.
    List {
        /// running, compensating, completed, compensated or parked.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One saga's state, failed step, compensation attempts and last error.
    Show { id: String },
    /// Resume a parked saga's compensation now, with a fresh retry budget.
    Retry { id: String },
}

#[derive(Subcommand)]
enum ParticipantCmd {
    /// Every participant with its address, health and in-doubt count.
    List,
    /// Prepared txns a participant holds: age, participants, locks. NAME may also be the
    /// participant's URL, which works while the coordinator is down.
    InDoubt { name: String },
}

#[derive(Subcommand)]
enum FailpointCmd {
    /// Arm a failpoint on NODE (coordinator, p1, ...): ACTION is crash, sleep(MS), pause, ...
    Set {
        node: String,
        name: String,
        action: String,
    },
    /// Disarm a failpoint.
    Clear { node: String, name: String },
    /// The failpoints of NODE and their actions.
    List { node: String },
}

type Res<T> = Result<T, String>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("txnctl: {e}");
            std::process::exit(1);
        }
    }
}

/// A channel to a service; every call carries the admin token when one is given.
type Ch = AuthChannel;

/// How txnctl reaches services: TLS settings and token, set once from the flags.
static CONN: std::sync::OnceLock<(ClientTls, BearerToken)> = std::sync::OnceLock::new();

fn setup_connections(cli: &Cli) -> Res<()> {
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

async fn connect(what: &str, url: &str) -> Res<Ch> {
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
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch,
        token.clone(),
    ))
}

/// Writes a CA and a certificate per node into `dir`.
fn make_certs(dir: &std::path::Path, nodes: &[String]) -> Res<Value> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("generating certificates: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("--dir {}: {e}", dir.display()))?;
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).map_err(|e| format!("writing {}: {e}", path.display()))
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "txnkit throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    write("ca.pem", &ca.pem())?;
    for node in nodes {
        if node.is_empty()
            || !node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "node {node:?}: use letters, digits, '-' and '_' only"
            ));
        }
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &ca).map_err(err)?;
        write(&format!("{node}.pem"), &cert.pem())?;
        write(&format!("{node}.key"), &key.serialize_pem())?;
        let key_path = dir.join(format!("{node}.key"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("protecting {}: {e}", key_path.display()))?;
    }
    Ok(json!({"dir": dir.display().to_string(), "ca": "ca.pem", "nodes": nodes.join(",")}))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn status_err(s: tonic::Status) -> String {
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

async fn run(cli: Cli) -> Res<()> {
    setup_connections(&cli)?;
    let coord = || connect("the coordinator", &cli.coordinator);
    let out = match cli.command {
        Cmd::Status => {
            let s = pb::admin_client::AdminClient::new(coord().await?)
                .status(pb::AdminStatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            status_json(&s)
        }
        Cmd::Txn(c) => txn(c, coord().await?).await?,
        Cmd::Saga(c) => saga(c, coord().await?).await?,
        Cmd::Participant(ParticipantCmd::List) => {
            let r = pb::admin_client::AdminClient::new(coord().await?)
                .list_participants(pb::ListParticipantsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            Value::Array(r.participants.iter().map(participant_json).collect())
        }
        Cmd::Participant(ParticipantCmd::InDoubt { name }) => {
            let url = if name.starts_with("http://") || name.starts_with("https://") {
                name.clone()
            } else {
                participant_url(coord().await?, &name).await?
            };
            let r = pb::participant_admin_client::ParticipantAdminClient::new(
                connect(&name, &url).await?,
            )
            .in_doubt(pb::InDoubtRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
            Value::Array(
                r.txns
                    .iter()
                    .map(|t| {
                        json!({
                            "txn_id": t.txn_id,
                            "age_ms": t.age_ms,
                            "participants": t.participants.join(","),
                            "locks": t.locked_keys.iter().map(|k| String::from_utf8_lossy(k).into_owned()).collect::<Vec<_>>().join(","),
                            "coordinator_epoch": t.coordinator_epoch,
                            "held": t.held,
                        })
                    })
                    .collect(),
            )
        }
        Cmd::Transfer {
            from,
            to,
            amount,
            protocol,
            allow_negative,
            client_txn_id,
        } => {
            let (fp, fk) = account(&from, "--from")?;
            let (tp, tk) = account(&to, "--to")?;
            if amount <= 0 {
                return Err(format!("--amount: must be positive, got {amount}"));
            }
            let add = |key: &str, delta: i64, min: Option<i64>| pb::Op {
                kind: Some(pb::op::Kind::Add(pb::AddOp {
                    key: key.as_bytes().to_vec(),
                    delta,
                    min,
                    max: None,
                })),
            };
            let mut branches = vec![pb::Branch {
                participant: fp.clone(),
                ops: vec![add(&fk, -amount, (!allow_negative).then_some(0))],
            }];
            if tp == fp {
                branches[0].ops.push(add(&tk, amount, None));
            } else {
                branches.push(pb::Branch {
                    participant: tp,
                    ops: vec![add(&tk, amount, None)],
                });
            }
            let req = pb::TransactRequest {
                protocol: protocol_of(&protocol)? as i32,
                branches,
                prepare_timeout_ms: 0,
                client_txn_id: client_txn_id.unwrap_or_default(),
            };
            transact(coord().await?, req).await?
        }
        Cmd::Read { accounts } => {
            let mut branches: Vec<pb::Branch> = Vec::new();
            for a in &accounts {
                let (p, k) = account(a, "account")?;
                let op = pb::Op {
                    kind: Some(pb::op::Kind::Read(pb::ReadOp {
                        key: k.into_bytes(),
                    })),
                };
                match branches.iter_mut().find(|b| b.participant == p) {
                    Some(b) => b.ops.push(op),
                    None => branches.push(pb::Branch {
                        participant: p,
                        ops: vec![op],
                    }),
                }
            }
            let req = pb::TransactRequest {
                protocol: pb::Protocol::TwoPhase as i32,
                branches,
                prepare_timeout_ms: 0,
                client_txn_id: String::new(),
            };
            let r = pb::coordinator_client::CoordinatorClient::new(coord().await?)
                .transact(req)
                .await
                .map_err(status_err)?
                .into_inner();
            if r.outcome != pb::Outcome::Committed as i32 {
                return Err(format!("the read aborted: {}", r.reason));
            }
            let mut rows = Vec::new();
            for b in &r.results {
                for kv in &b.reads {
                    rows.push(json!({
                        "account": format!("{}/{}", b.participant, String::from_utf8_lossy(&kv.key)),
                        "value": kv.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                    }));
                }
            }
            Value::Array(rows)
        }
        Cmd::Submit { file } => {
            let text = read_input(&file)?;
            let req = parse_submit(&text).map_err(|e| format!("{file}: {e}"))?;
            transact(coord().await?, req).await?
        }
        Cmd::Failpoint(c) => failpoint(c, &cli.coordinator).await?,
        Cmd::Certs { dir, nodes } => make_certs(&dir, &nodes)?,
    };
    print(&out, cli.json);
    Ok(())
}

fn account(raw: &str, field: &str) -> Res<(String, String)> {
    match raw.split_once('/') {
        Some((p, k)) if !p.is_empty() && !k.is_empty() => Ok((p.to_owned(), k.to_owned())),
        _ => Err(format!(
            "{field}: {raw:?} is not PARTICIPANT/KEY (e.g. p1/alice)"
        )),
    }
}

fn protocol_of(raw: &str) -> Res<pb::Protocol> {
    match raw {
        "2pc" | "two-phase" => Ok(pb::Protocol::TwoPhase),
        "saga" => Ok(pb::Protocol::Saga),
        other => Err(format!("--protocol: {other:?} is not 2pc or saga")),
    }
}

async fn transact(ch: Ch, req: pb::TransactRequest) -> Res<Value> {
    let r = pb::coordinator_client::CoordinatorClient::new(ch)
        .transact(req)
        .await
        .map_err(status_err)?
        .into_inner();
    let outcome = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Committed) => "committed",
        Ok(pb::Outcome::Aborted) => "aborted",
        _ => "unknown",
    };
    let reads: Vec<Value> = r
        .results
        .iter()
        .flat_map(|b| {
            b.reads.iter().map(move |kv| {
                json!({
                    "account": format!("{}/{}", b.participant, String::from_utf8_lossy(&kv.key)),
                    "value": kv.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                })
            })
        })
        .collect();
    let mut v = json!({ "txn_id": r.txn_id, "outcome": outcome });
    if !r.reason.is_empty() {
        v["reason"] = json!(r.reason);
    }
    if let Some(b) = r.failed_branch {
        v["failed_branch"] = json!(b);
    }
    if !reads.is_empty() {
        v["reads"] = Value::Array(reads);
    }
    Ok(v)
}

fn read_input(file: &str) -> Res<String> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .take(MAX_SUBMIT_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        f.take(MAX_SUBMIT_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(text)
}

/// The JSON form of a transaction for `submit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTxn {
    #[serde(default = "default_protocol")]
    protocol: String,
    branches: Vec<SubmitBranch>,
    #[serde(default)]
    timeout_ms: u32,
    /// Idempotency key (see TransactRequest.client_txn_id).
    #[serde(default)]
    client_txn_id: String,
}

fn default_protocol() -> String {
    "2pc".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBranch {
    participant: String,
    ops: Vec<SubmitOp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum SubmitOp {
    Read {
        key: String,
    },
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Add {
        key: String,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
    Check {
        key: String,
        expected: Option<String>,
    },
}

fn parse_submit(text: &str) -> Res<pb::TransactRequest> {
    let t: SubmitTxn =
        serde_json::from_str(text).map_err(|e| format!("malformed transaction JSON: {e}"))?;
    let protocol = protocol_of(&t.protocol).map_err(|e| e.replace("--protocol", "protocol"))?;
    let branches = t
        .branches
        .into_iter()
        .map(|b| pb::Branch {
            participant: b.participant,
            ops: b
                .ops
                .into_iter()
                .map(|op| {
                    use pb::op::Kind;
                    let kind = match op {
                        SubmitOp::Read { key } => Kind::Read(pb::ReadOp {
                            key: key.into_bytes(),
                        }),
                        SubmitOp::Put { key, value } => Kind::Put(pb::PutOp {
                            key: key.into_bytes(),
                            value: value.into_bytes(),
                        }),
                        SubmitOp::Delete { key } => Kind::Delete(pb::DeleteOp {
                            key: key.into_bytes(),
                        }),
                        SubmitOp::Add {
                            key,
                            delta,
                            min,
                            max,
                        } => Kind::Add(pb::AddOp {
                            key: key.into_bytes(),
                            delta,
                            min,
                            max,
                        }),
                        SubmitOp::Check { key, expected } => Kind::Check(pb::CheckOp {
                            key: key.into_bytes(),
                            expected: expected.map(String::into_bytes),
                        }),
                    };
                    pb::Op { kind: Some(kind) }
                })
                .collect(),
        })
        .collect();
    Ok(pb::TransactRequest {
        protocol: protocol as i32,
        branches,
        prepare_timeout_ms: t.timeout_ms,
        client_txn_id: t.client_txn_id,
    })
}

async fn txn(c: TxnCmd, ch: Ch) -> Res<Value> {
    let mut admin = pb::admin_client::AdminClient::new(ch);
    let force =
        |id: String, decision: pb::Decision, reason: String, heuristic: bool| pb::ForceTxnRequest {
            txn_id: id,
            decision: decision as i32,
            reason,
            heuristic,
        };
    Ok(match c {
        TxnCmd::List { state, limit } => {
            let r = admin
                .list_txns(pb::ListTxnsRequest {
                    state: state.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            Value::Array(
                r.txns
                    .iter()
                    .map(|t| json!({"txn_id": t.txn_id, "state": t.state, "participants": t.participants.join(","), "age_ms": t.age_ms}))
                    .collect(),
            )
        }
        TxnCmd::Show { id } => detail_json(
            &admin
                .show_txn(pb::TxnIdRequest { txn_id: id })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        TxnCmd::Retry { id } => {
            let r = admin
                .retry_txn(pb::TxnIdRequest { txn_id: id.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            json!({"txn_id": id, "action": r.action})
        }
        TxnCmd::Abort {
            id,
            reason,
            heuristic,
        } => detail_json(
            &admin
                .force_txn(force(id, pb::Decision::Abort, reason, heuristic))
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        TxnCmd::Commit {
            id,
            reason,
            heuristic,
        } => detail_json(
            &admin
                .force_txn(force(id, pb::Decision::Commit, reason, heuristic))
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
    })
}

async fn saga(c: SagaCmd, ch: Ch) -> Res<Value> {
    let mut admin = pb::admin_client::AdminClient::new(ch);
    Ok(match c {
        SagaCmd::List { state, limit } => {
            let r = admin
                .list_sagas(pb::ListSagasRequest {
                    state: state.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            Value::Array(r.sagas.iter().map(saga_json).collect())
        }
        SagaCmd::Show { id } => saga_json(
            &admin
                .show_saga(pb::TxnIdRequest { txn_id: id })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
        SagaCmd::Retry { id } => saga_json(
            &admin
                .retry_saga(pb::TxnIdRequest { txn_id: id })
                .await
                .map_err(status_err)?
                .into_inner(),
        ),
    })
}

async fn participant_url(ch: Ch, name: &str) -> Res<String> {
    let r = pb::admin_client::AdminClient::new(ch)
        .list_participants(pb::ListParticipantsRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    r.participants
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.url.clone())
        .ok_or_else(|| {
            format!(
                "unknown participant {name:?}; the coordinator knows: {}",
                r.participants
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

async fn failpoint(c: FailpointCmd, coordinator: &str) -> Res<Value> {
    let node = match &c {
        FailpointCmd::Set { node, .. }
        | FailpointCmd::Clear { node, .. }
        | FailpointCmd::List { node } => node.clone(),
    };
    let url = if node == "coordinator" {
        coordinator.to_owned()
    } else {
        participant_url(connect("the coordinator", coordinator).await?, &node).await?
    };
    let mut fp = pb::failpoints_client::FailpointsClient::new(connect(&node, &url).await?);
    Ok(match c {
        FailpointCmd::Set { name, action, .. } => {
            fp.set_failpoint(pb::SetFailpointRequest {
                name: name.clone(),
                action: action.clone(),
            })
            .await
            .map_err(status_err)?;
            json!({"node": node, "failpoint": name, "action": action})
        }
        FailpointCmd::Clear { name, .. } => {
            fp.set_failpoint(pb::SetFailpointRequest {
                name: name.clone(),
                action: "off".into(),
            })
            .await
            .map_err(status_err)?;
            json!({"node": node, "failpoint": name, "action": "off"})
        }
        FailpointCmd::List { .. } => {
            let r = fp
                .list_failpoints(pb::ListFailpointsRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            Value::Array(
                r.failpoints
                    .iter()
                    .map(|f| json!({"failpoint": f.name, "action": f.action}))
                    .collect(),
            )
        }
    })
}

fn participant_json(p: &pb::ParticipantInfo) -> Value {
    json!({"name": p.name, "url": p.url, "healthy": p.healthy, "in_doubt": p.in_doubt})
}

fn status_json(s: &pb::AdminStatusResponse) -> Value {
    json!({
        "epoch": s.epoch,
        "uptime_s": s.uptime_ms / 1000,
        "participants": s.participants.iter().map(participant_json).collect::<Vec<_>>(),
        "txns_in_flight": s.txns_in_flight,
        "txns_committed": s.txns_committed,
        "txns_aborted": s.txns_aborted,
        "txns_committing": s.txns_committing,
        "txns_in_doubt": s.txns_in_doubt,
        "sagas_running": s.sagas_running,
        "sagas_compensating": s.sagas_compensating,
        "sagas_parked": s.sagas_parked,
        "sagas_completed": s.sagas_completed,
        "sagas_compensated": s.sagas_compensated,
    })
}

fn decision_name(d: i32) -> &'static str {
    match pb::Decision::try_from(d) {
        Ok(pb::Decision::Commit) => "COMMIT",
        Ok(pb::Decision::Abort) => "ABORT",
        Ok(pb::Decision::Pending) => "PENDING",
        _ => "UNKNOWN",
    }
}

fn state_name(s: i32) -> &'static str {
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::Prepared) => "prepared",
        Ok(pb::TxnState::Committed) => "committed",
        Ok(pb::TxnState::Aborted) => "aborted",
        Ok(pb::TxnState::Unknown) => "no record",
        _ => "?",
    }
}

fn detail_json(d: &pb::TxnDetail) -> Value {
    let mut v = json!({
        "txn_id": d.txn_id,
        "coordinator_state": d.coordinator_state,
        "decision": decision_name(d.decision),
        "decided_at_unix_ms": (d.decided_at_unix_ms > 0).then_some(d.decided_at_unix_ms),
        "branches": d.branches.iter().map(|b| json!({
            "participant": b.participant,
            "state": if b.reachable { state_name(b.state) } else { "unreachable" },
            "acked": b.acked,
            "commit_attempts": b.commit_attempts,
            "last_error": b.last_error,
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = &d.forced {
        v["forced"] = json!({
            "decision": decision_name(f.decision),
            "reason": f.reason,
            "heuristic": f.heuristic,
            "at_unix_ms": f.at_unix_ms,
        });
    }
    v
}

fn saga_json(s: &pb::SagaSummary) -> Value {
    json!({
        "saga_id": s.saga_id,
        "state": s.state,
        "steps": s.steps,
        "next_step": s.next_step,
        "failed_step": s.failed_step,
        "reason": s.reason,
        "compensation_attempts": s.compensation_attempts,
        "last_error": s.last_error,
        "participants": s.participants.join(","),
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            table_rows(&mut t, items);
            t.to_string()
        }
        Value::Object(_) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            kv_rows(&mut t, v);
            t.to_string()
        }
        other => other.to_string(),
    }
}

fn table_rows(t: &mut Table, items: &[Value]) {
    if let Some(Value::Object(first)) = items.first() {
        t.set_header(first.keys().cloned().collect::<Vec<_>>());
        for item in items {
            if let Value::Object(m) = item {
                t.add_row(m.values().map(cell).collect::<Vec<_>>());
            }
        }
    }
}

fn kv_rows(t: &mut Table, v: &Value) {
    if let Value::Object(m) = v {
        for (k, val) in m {
            t.add_row(vec![k.clone(), cell(val)]);
        }
    }
}

fn print(v: &Value, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON values serialize")
        );
        return;
    }
    match v {
        Value::Array(items) if items.is_empty() => println!("(none)"),
        Value::Array(items) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            table_rows(&mut t, items);
            println!("{t}");
        }
        other => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            kv_rows(&mut t, other);
            println!("{t}");
        }
    }
}
