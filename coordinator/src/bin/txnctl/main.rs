//! txnctl: the operator's command line for the coordinator and its participants. Finds stuck
//! transactions, shows why they are stuck, forces outcomes safely, retries on demand, and runs
//! transfers, reads and whole transactions by hand.
//!
//! Exit status ([`Exit`]): 0 on success (a transaction committed), 1 for errors (one line on
//! stderr; also after a list printed without some participant's part), 2 for usage errors, 3
//! when the transaction aborted, 4 when its outcome is unknown (the call may have run).
//! `--json` output carries the same outcome. `cli` documents it per command.
//!
//! Layout: this file dispatches each command and holds the requests it builds itself
//! (transfers, reads). `cli` declares the commands and flags, `conn` connects to the services
//! and turns their errors into one line, `admin` runs the operator commands for txns, sagas
//! and failpoints, `submit` reads a transaction written as JSON, `certs` writes throwaway
//! certificates, and `output` prints results as tables or JSON.

mod admin;
mod certs;
mod cli;
mod conn;
mod feeds;
mod output;
mod submit;

use clap::Parser;
use serde_json::{Value, json};
use txn_proto::pb::v1 as pb;

use admin::{failpoint, in_doubt, participant_url, saga, txn};
use certs::make_certs;
use cli::{Cli, Cmd, ParticipantCmd, ReadmodelCmd, TxnCmd};
use conn::{connect_any, connect_from, setup_connections, status_err};
use output::{participant_json, print, status_json};
use submit::{parse_submit, read_input};

type Res<T> = Result<T, String>;

/// How a command ended, beyond success or an error: the exit status says whether a
/// transaction committed, aborted, or may or may not have run, so that
/// `txnctl transfer ... && next-step` goes on only when the money moved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Exit {
    /// 0.
    Done,
    /// 1, after the output: the command printed what it could, and this says what is missing.
    Failed(String),
    /// 3.
    Aborted,
    /// 4.
    Unknown,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(Exit::Done) => 0,
        Ok(Exit::Failed(why)) => {
            eprintln!("txnctl: {why}");
            1
        }
        Ok(Exit::Aborted) => 3,
        Ok(Exit::Unknown) => 4,
        Err(e) => {
            eprintln!("txnctl: {e}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Res<Exit> {
    let mut exit = Exit::Done;
    setup_connections(&cli)?;
    let coord = || connect_any("the coordinator", &cli.coordinator);
    let out = match cli.command {
        Cmd::Status => {
            let s = pb::admin_client::AdminClient::new(coord().await?)
                .status(pb::AdminStatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            status_json(&s)
        }
        Cmd::Txn(TxnCmd::Show { id, follow }) => {
            // An events transfer is known to its participants, not to the coordinator.
            let s = feeds::transfer_status(coord().await?, &id, follow).await?;
            if s.phase == pb::TransferPhase::Unknown as i32 {
                let (v, e) = txn(TxnCmd::Show { id, follow }, coord().await?).await?;
                exit = e;
                v
            } else {
                feeds::transfer_json(&s)
            }
        }
        Cmd::Txn(c) => {
            let (v, e) = txn(c, coord().await?).await?;
            exit = e;
            v
        }
        Cmd::Events { cmd } => feeds::events(cmd, coord().await?).await?,
        Cmd::Readmodel(c) => {
            let balances = matches!(c, ReadmodelCmd::Balances { .. });
            let v = feeds::readmodel(c, &cli.readmodel).await?;
            if balances && !cli.json {
                print(&v["balances"], false);
                v["feeds"].clone()
            } else {
                v
            }
        }
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
            in_doubt(&name, &url).await?
        }
        Cmd::Transfer {
            from,
            to,
            amount,
            protocol,
            wait,
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
                commit_point: 0,
            };
            let (mut v, e) = transact(&cli.coordinator, req).await?;
            exit = e;
            if wait && v["outcome"] == "accepted" {
                let id = v["txn_id"].as_str().unwrap_or_default().to_owned();
                let s = feeds::transfer_status(coord().await?, &id, true).await?;
                v = feeds::transfer_json(&s);
                exit = match pb::TransferPhase::try_from(s.phase) {
                    Ok(pb::TransferPhase::Credited) => Exit::Done,
                    Ok(pb::TransferPhase::Refunded | pb::TransferPhase::Rejected) => Exit::Aborted,
                    _ => Exit::Unknown,
                };
            }
            v
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
                commit_point: 0,
            };
            let r = transact_at_any(&cli.coordinator, req).await?;
            let r = match r {
                Ok(r) => r.into_inner(),
                Err(s) if may_have_run(&s) => {
                    let reason = status_err(s);
                    eprintln!("txnctl: the read's outcome is unknown: {reason}");
                    if cli.json {
                        print(&json!({ "outcome": "unknown", "reason": reason }), true);
                    }
                    return Ok(Exit::Unknown);
                }
                Err(s) => return Err(status_err(s)),
            };
            if r.outcome != pb::Outcome::Committed as i32 {
                eprintln!("txnctl: the read aborted: {}", r.reason);
                if cli.json {
                    let v = json!({ "txn_id": r.txn_id, "outcome": "aborted", "reason": r.reason });
                    print(&v, true);
                }
                return Ok(Exit::Aborted);
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
            let (v, e) = transact(&cli.coordinator, req).await?;
            exit = e;
            v
        }
        Cmd::Failpoint(c) => failpoint(c, &cli.coordinator).await?,
        Cmd::Certs { dir, nodes } => make_certs(&dir, &nodes)?,
    };
    print(&out, cli.json);
    Ok(exit)
}

/// Whether a failed Transact call may still have run: it reached the coordinator (or may
/// have) and then timed out, was cut off or broke. A call refused before it got there
/// (connection refused, overloaded, bad input, or the coordinator's "not started") certainly
/// did not.
fn may_have_run(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown => true,
        tonic::Code::Unavailable => {
            let text = format!("{} {:?}", s.message(), std::error::Error::source(s));
            !(s.message().starts_with("not started")
                || text.contains("tcp connect error")
                || text.contains("Connection refused"))
        }
        _ => false,
    }
}

/// Sends Transact to the first coordinator of `urls` that answers, and on to the next while
/// one refuses it as unavailable before running it (its log unreachable, say).
async fn transact_at_any(
    urls: &str,
    req: pb::TransactRequest,
) -> Res<Result<tonic::Response<pb::TransactResponse>, tonic::Status>> {
    let mut start = 0;
    loop {
        let (ch, i) = connect_from("the coordinator", urls, start).await?;
        let r = pb::coordinator_client::CoordinatorClient::new(ch)
            .transact(req.clone())
            .await;
        match &r {
            Err(s) if s.code() == tonic::Code::Unavailable && !may_have_run(s) => {
                if connect_from("the coordinator", urls, i + 1).await.is_err() {
                    return Ok(r);
                }
                start = i + 1;
            }
            _ => return Ok(r),
        }
    }
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
        "events" => Ok(pb::Protocol::Events),
        other => Err(format!("--protocol: {other:?} is not 2pc, saga or events")),
    }
}

/// Runs one transaction: its result to print, and how the command exits.
async fn transact(urls: &str, req: pb::TransactRequest) -> Res<(Value, Exit)> {
    let r = transact_at_any(urls, req).await?;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(s) if may_have_run(&s) => {
            let reason = status_err(s);
            eprintln!("txnctl: the outcome is unknown: {reason}");
            return Ok((
                json!({ "outcome": "unknown", "reason": reason }),
                Exit::Unknown,
            ));
        }
        Err(s) => return Err(status_err(s)),
    };
    let (outcome, exit) = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Committed) => ("committed", Exit::Done),
        // The first step committed; the rest follows from the feeds (`txnctl txn show ID`).
        Ok(pb::Outcome::Accepted) => ("accepted", Exit::Done),
        Ok(pb::Outcome::Aborted) => ("aborted", Exit::Aborted),
        _ => ("unknown", Exit::Unknown),
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
    Ok((v, exit))
}
