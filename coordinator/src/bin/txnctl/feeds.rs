//! The commands of the event-driven side: `txnctl events` (each participant's feed, its
//! consumers and lag, its own inboxes), the status of an events transfer, and `txnctl
//! readmodel` (the CQRS view's balances, statements, lag and rebuild).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use txn_proto::pb::v1 as pb;

use crate::Res;
use crate::cli::{EventsCmd, ReadmodelCmd};
use crate::conn::{Ch, connect, status_err};

/// How often `--follow` and `--wait` ask again, and for how long at most.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const FOLLOW_LIMIT: Duration = Duration::from_secs(30);

/// Every participant the coordinator knows, with its URL.
async fn participants(coord: Ch) -> Res<Vec<(String, String)>> {
    let r = pb::admin_client::AdminClient::new(coord)
        .list_participants(pb::ListParticipantsRequest {})
        .await
        .map_err(status_err)?
        .into_inner();
    Ok(r.participants
        .into_iter()
        .map(|p| (p.name, p.url))
        .collect())
}

fn ms_ago(at_unix_ms: u64) -> Value {
    if at_unix_ms == 0 {
        return json!(null);
    }
    json!(txn_types::unix_ms().saturating_sub(at_unix_ms))
}

pub async fn events(cmd: Option<EventsCmd>, coord: Ch) -> Res<Value> {
    let nodes = participants(coord.clone()).await?;
    let url_of = |name: &str| -> Res<String> {
        nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.clone())
            .ok_or_else(|| {
                format!(
                    "no participant {name:?}; the coordinator knows: {}",
                    names(&nodes)
                )
            })
    };
    match cmd.unwrap_or(EventsCmd::List) {
        EventsCmd::List => {
            let mut rows = Vec::new();
            for (name, url) in &nodes {
                let s = feed_status(name, url).await?;
                let base = json!({"participant": name, "head": s.head, "floor": s.floor});
                if s.consumers.is_empty() {
                    let mut row = base.clone();
                    row["consumer"] = json!("-");
                    rows.push(row);
                }
                for c in &s.consumers {
                    let mut row = base.clone();
                    row["consumer"] = json!(c.name);
                    row["acked"] = json!(c.acked);
                    row["lag"] = json!(c.lag);
                    row["connected"] = json!(c.connected);
                    row["last_ack_ms_ago"] = ms_ago(c.acked_at_unix_ms);
                    rows.push(row);
                }
            }
            Ok(Value::Array(rows))
        }
        EventsCmd::Inboxes => {
            let mut rows = Vec::new();
            for (name, url) in &nodes {
                let s = feed_status(name, url).await?;
                for i in &s.inboxes {
                    rows.push(json!({
                        "participant": name,
                        "source": i.source,
                        "next_offset": i.next_offset,
                        "source_head": i.source_head,
                        "applied": i.applied,
                        "duplicates": i.duplicates,
                        "connected": i.connected,
                        "last_error": i.last_error,
                        "unsettled_transfers": s.unsettled_transfers,
                    }));
                }
            }
            Ok(Value::Array(rows))
        }
        EventsCmd::Show {
            participant,
            from,
            limit,
        } => {
            let url = url_of(&participant)?;
            let b = pb::event_feed_client::EventFeedClient::new(connect(&participant, &url).await?)
                .read_events(pb::ReadEventsRequest {
                    from_offset: from,
                    limit,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            Ok(Value::Array(b.events.iter().map(event_json).collect()))
        }
        EventsCmd::Forget {
            participant,
            consumer,
        } => {
            let url = url_of(&participant)?;
            let r = pb::participant_admin_client::ParticipantAdminClient::new(
                connect(&participant, &url).await?,
            )
            .forget_consumer(pb::ForgetConsumerRequest {
                consumer: consumer.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
            Ok(json!({"participant": participant, "consumer": consumer, "forgotten": r.forgotten}))
        }
    }
}

fn names(nodes: &[(String, String)]) -> String {
    nodes
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn feed_status(name: &str, url: &str) -> Res<pb::FeedStatusResponse> {
    Ok(
        pb::event_feed_client::EventFeedClient::new(connect(name, url).await?)
            .feed_status(pb::FeedStatusRequest {})
            .await
            .map_err(status_err)?
            .into_inner(),
    )
}

fn kind_name(kind: i32) -> String {
    pb::EventKind::try_from(kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn changes_text(changes: &[pb::Change]) -> String {
    changes
        .iter()
        .map(|c| {
            let key = String::from_utf8_lossy(&c.key);
            let value = c
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| "(deleted)".into());
            match c.delta {
                Some(d) => format!("{key}={value} ({d:+})"),
                None => format!("{key}={value}"),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn event_json(e: &pb::Event) -> Value {
    json!({
        "offset": e.offset,
        "kind": kind_name(e.kind),
        "txn_id": e.txn_id,
        "participants": e.participants.join(","),
        "changes": changes_text(&e.changes),
        "reason": e.reason,
    })
}

fn phase_name(phase: i32) -> String {
    pb::TransferPhase::try_from(phase)
        .map(|p| {
            p.as_str_name()
                .trim_start_matches("TRANSFER_PHASE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

fn state_name(state: i32) -> String {
    pb::TransferState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TRANSFER_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".into())
}

pub fn transfer_json(s: &pb::TransferStatusResponse) -> Value {
    let mut v = json!({
        "transfer_id": s.transfer_id,
        "protocol": "events",
        "phase": phase_name(s.phase),
        "settled": s.settled,
    });
    for r in &s.records {
        let role = match pb::TransferRole::try_from(r.role) {
            Ok(pb::TransferRole::Source) => "source",
            _ => "destination",
        };
        v[role] = json!(format!(
            "{} {}{}{}",
            r.participant,
            state_name(r.state),
            if r.changes.is_empty() {
                String::new()
            } else {
                format!(" [{}]", changes_text(&r.changes))
            },
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        ));
    }
    if let (Some(accepted), Some(settled)) = (
        s.records
            .iter()
            .map(|r| r.accepted_at_unix_ms)
            .find(|t| *t > 0),
        s.records.iter().map(|r| r.settled_at_unix_ms).max(),
    ) && s.settled
    {
        v["accept_to_settled_ms"] = json!(settled.saturating_sub(accepted));
    }
    if !s.unreachable.is_empty() {
        v["unreachable"] = json!(s.unreachable.join(","));
    }
    v
}

/// A transfer's status; with `follow`, polls until it has settled (printing each new phase
/// on stderr) or [`FOLLOW_LIMIT`] passes.
pub async fn transfer_status(coord: Ch, id: &str, follow: bool) -> Res<pb::TransferStatusResponse> {
    let mut client = pb::coordinator_client::CoordinatorClient::new(coord);
    let started = Instant::now();
    let mut last = None;
    loop {
        let s = client
            .transfer_status(pb::TxnIdRequest {
                txn_id: id.to_owned(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        if !follow || s.settled || started.elapsed() > FOLLOW_LIMIT {
            return Ok(s);
        }
        if last != Some(s.phase) {
            eprintln!(
                "{} ms: {}",
                started.elapsed().as_millis(),
                phase_name(s.phase)
            );
            last = Some(s.phase);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

fn account_ref(raw: &str) -> Res<pb::AccountRef> {
    let (p, k) = crate::account(raw, "account")?;
    Ok(pb::AccountRef {
        participant: p,
        key: k.into_bytes(),
    })
}

fn feeds_json(feeds: &[pb::FeedProgress]) -> Value {
    Value::Array(
        feeds
            .iter()
            .map(|f| {
                json!({
                    "participant": f.participant,
                    "offset": f.offset,
                    "head": f.head,
                    "lag": f.lag,
                    "held": f.held,
                    "as_of_ms_ago": ms_ago(f.as_of_unix_ms),
                    "applied": f.applied,
                    "duplicates": f.duplicates,
                    "connected": f.connected,
                    "last_error": f.last_error,
                })
            })
            .collect(),
    )
}

pub async fn readmodel(cmd: ReadmodelCmd, url: &str) -> Res<Value> {
    let ch = connect("the read model", url).await?;
    let mut rm = pb::read_model_client::ReadModelClient::new(ch.clone());
    Ok(match cmd {
        ReadmodelCmd::Balances {
            accounts,
            consistent,
        } => {
            let accounts = accounts
                .iter()
                .map(|a| account_ref(a))
                .collect::<Res<Vec<_>>>()?;
            let r = rm
                .get_balances(pb::GetBalancesRequest {
                    accounts,
                    consistent,
                    limit: 0,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let rows: Vec<Value> = r
                .balances
                .iter()
                .map(|b| {
                    json!({
                        "account": format!("{}/{}", b.participant, String::from_utf8_lossy(&b.key)),
                        "value": b.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                    })
                })
                .collect();
            json!({"balances": rows, "feeds": feeds_json(&r.feeds)})
        }
        ReadmodelCmd::Statement {
            account,
            limit,
            consistent,
        } => {
            let r = rm
                .get_statement(pb::GetStatementRequest {
                    account: Some(account_ref(&account)?),
                    limit,
                    consistent,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            Value::Array(
                r.entries
                    .iter()
                    .map(|e| {
                        json!({
                            "txn_id": e.txn_id,
                            "kind": kind_name(e.kind),
                            "delta": e.delta,
                            "value": e.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                            "counterparts": e.counterparts.iter().map(|c| format!("{}/{}", c.participant, String::from_utf8_lossy(&c.key))).collect::<Vec<_>>().join(","),
                            "participants": e.participants.join(","),
                            "offset": e.offset,
                        })
                    })
                    .collect(),
            )
        }
        ReadmodelCmd::Status => {
            let r = rm
                .status(pb::ReadModelStatusRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            feeds_json(&r.feeds)
        }
        ReadmodelCmd::Rebuild => {
            let r = pb::read_model_admin_client::ReadModelAdminClient::new(ch)
                .rebuild(pb::RebuildRequest {})
                .await
                .map_err(status_err)?
                .into_inner();
            feeds_json(&r.feeds)
        }
    })
}
