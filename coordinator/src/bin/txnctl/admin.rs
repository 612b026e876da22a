//! The operator commands that go through the coordinator's Admin service (txns and sagas:
//! list, show, retry, force an outcome) and through a node's Failpoints service. A participant
//! is named as the coordinator knows it, and its address is asked of the coordinator. Lists
//! follow the services' pages until they have `--limit` entries or there are no more.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use txn_proto::pb::v1 as pb;

use crate::cli::{FailpointCmd, SagaCmd, TxnCmd};
use crate::conn::{Ch, connect, connect_any, status_err};
use crate::output::{detail_json, phase_name, saga_json};
use crate::{Exit, Res};

/// Most entries a list command collects, whatever --limit says.
const MAX_LIST: u32 = 100_000;

pub async fn txn(c: TxnCmd, ch: Ch) -> Res<(Value, Exit)> {
    let mut admin = pb::admin_client::AdminClient::new(ch);
    let force =
        |id: String, decision: pb::Decision, reason: String, heuristic: bool| pb::ForceTxnRequest {
            txn_id: id,
            decision: decision as i32,
            reason,
            heuristic,
        };
    let done = |v: Value| (v, Exit::Done);
    Ok(match c {
        TxnCmd::List { state, limit } => {
            let limit = limit.min(MAX_LIST) as usize;
            let mut txns = Vec::new();
            // A participant that could not be asked, with why (the first page it failed).
            let mut unanswered: BTreeMap<String, String> = BTreeMap::new();
            let mut token = String::new();
            while txns.len() < limit {
                let r = admin
                    .list_txns(pb::ListTxnsRequest {
                        state: state.map_or(pb::TxnPhase::Unspecified, |s| s.to_wire()) as i32,
                        limit: 0,
                        page_size: (limit - txns.len()).min(1000) as u32,
                        page_token: token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for u in r.unanswered {
                    unanswered.entry(u.participant).or_insert(u.error);
                }
                txns.extend(r.txns);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            txns.truncate(limit);
            txns.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
            let v = Value::Array(
                txns.iter()
                    .map(|t| json!({"txn_id": t.txn_id, "state": phase_name(t.state), "participants": t.participants.join(","), "age_ms": t.age_ms}))
                    .collect(),
            );
            if unanswered.is_empty() {
                done(v)
            } else {
                // Printed, but it may miss txns in doubt there: not a success.
                let who: Vec<String> = unanswered
                    .iter()
                    .map(|(p, e)| format!("{p} ({e})"))
                    .collect();
                let why = format!(
                    "could not read the in-doubt txns of {}; the list may miss some",
                    who.join(", ")
                );
                (v, Exit::Failed(why))
            }
        }
        TxnCmd::Show { id, .. } => done(detail_json(
            &admin
                .show_txn(pb::TxnIdRequest { txn_id: id })
                .await
                .map_err(status_err)?
                .into_inner(),
        )),
        TxnCmd::Retry { id } => {
            let r = admin
                .retry_txn(pb::TxnIdRequest { txn_id: id.clone() })
                .await
                .map_err(status_err)?
                .into_inner();
            done(json!({"txn_id": id, "action": r.action}))
        }
        TxnCmd::Abort {
            id,
            reason,
            heuristic,
        } => done(detail_json(
            &admin
                .force_txn(force(id, pb::Decision::Abort, reason, heuristic))
                .await
                .map_err(status_err)?
                .into_inner(),
        )),
        TxnCmd::Commit {
            id,
            reason,
            heuristic,
        } => done(detail_json(
            &admin
                .force_txn(force(id, pb::Decision::Commit, reason, heuristic))
                .await
                .map_err(status_err)?
                .into_inner(),
        )),
    })
}

pub async fn saga(c: SagaCmd, ch: Ch) -> Res<Value> {
    let mut admin = pb::admin_client::AdminClient::new(ch);
    Ok(match c {
        SagaCmd::List { state, limit } => {
            let limit = limit.min(MAX_LIST) as usize;
            let mut sagas = Vec::new();
            let mut token = String::new();
            while sagas.len() < limit {
                let r = admin
                    .list_sagas(pb::ListSagasRequest {
                        state: state.map_or(pb::SagaPhase::Unspecified, |s| s.to_wire()) as i32,
                        limit: 0,
                        page_size: (limit - sagas.len()).min(1000) as u32,
                        page_token: token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                sagas.extend(r.sagas);
                if r.next_page_token.is_empty() {
                    break;
                }
                token = r.next_page_token;
            }
            sagas.truncate(limit);
            sagas.sort_by_key(|s| std::cmp::Reverse(s.updated_at_unix_ms));
            Value::Array(sagas.iter().map(saga_json).collect())
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

/// Every txn `url`'s participant holds prepared, following its pages, oldest first.
pub async fn in_doubt(name: &str, url: &str) -> Res<Value> {
    let mut admin =
        pb::participant_admin_client::ParticipantAdminClient::new(connect(name, url).await?);
    let mut txns = Vec::new();
    let mut token = String::new();
    while txns.len() < MAX_LIST as usize {
        let r = admin
            .in_doubt(pb::InDoubtRequest {
                page_size: 0,
                page_token: token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        txns.extend(r.txns);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    txns.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
    Ok(Value::Array(
        txns.iter()
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
    ))
}

pub async fn participant_url(ch: Ch, name: &str) -> Res<String> {
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

pub async fn failpoint(c: FailpointCmd, coordinator: &str) -> Res<Value> {
    let node = match &c {
        FailpointCmd::Set { node, .. }
        | FailpointCmd::Clear { node, .. }
        | FailpointCmd::List { node } => node.clone(),
    };
    let url = if node == "coordinator" {
        // Of several coordinators, the first listed.
        coordinator
            .split(',')
            .map(str::trim)
            .next()
            .unwrap_or_default()
            .to_owned()
    } else {
        participant_url(connect_any("the coordinator", coordinator).await?, &node).await?
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
