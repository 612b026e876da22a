//! The operators' lists, a page at a time: txns (the coordinator's own, and those in doubt
//! at the participants) and sagas (unfinished, then ended ones still kept). Each page is
//! bounded in entries and in the work it takes, so a list costs the same however much history
//! there is, and each answer stays well inside the message limit.
//!
//! Tokens are the last txn id (for txns) or the last log key (for sagas) a page covered; the
//! next page starts after it. A participant that does not answer is named in the page
//! (`unanswered`), never silently left out.

use std::collections::{BTreeMap, HashSet};

use txn_coordinator_core::saga::{ENDED_SAGA_PREFIX, SAGA_PREFIX};
use txn_proto::pb::v1 as pb;
use txn_types::rec::{SagaRecord, SagaState};
use txn_types::record;
use txn_types::types::{InvalidInput, ParticipantId, TxnId};

use crate::admin::{AdminService, saga_state, saga_summary, timed};
use crate::admin_filter::{SagaFilter, TxnFilter, TxnKind};
use crate::error::CoordError;

/// Default page of a list.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page of a list.
pub const MAX_PAGE: usize = 1_000;
/// Saga log records one page of ListSagas may read while its filter skips them; past it the
/// page ends early, with a token to go on from.
pub const SAGA_SCAN_BUDGET: usize = 10_000;
/// Saga log records read at once.
const SAGA_SCAN_CHUNK: usize = 256;
/// Most pages of one participant's InDoubt the coordinator reads for one view of everything
/// in doubt (ShowTxn, forced outcomes): with at most 1000 txns a page, beyond any
/// participant's --max-prepared-txns default.
const MAX_IN_DOUBT_PAGES: usize = 1_000;

/// The page size a list request asks for: `page_size`, else the older `limit`, else the
/// default; at most [`MAX_PAGE`].
pub fn page_size(page_size: u32, limit: u32) -> usize {
    let asked = if page_size > 0 { page_size } else { limit };
    match asked {
        0 => DEFAULT_PAGE,
        n => (n as usize).min(MAX_PAGE),
    }
}

/// Prepared txns at the participants: txn -> (participants, oldest age, one entry per holder
/// naming it in `participants`).
pub(crate) type InDoubtMap = BTreeMap<String, (Vec<String>, u64, Vec<pb::InDoubtTxn>)>;

/// One participant's InDoubt page.
struct InDoubtPage {
    txns: Vec<pb::InDoubtTxn>,
    /// The page ended before the participant's last txn.
    more: bool,
}

impl AdminService {
    /// One page of `p`'s prepared txns after `after`.
    async fn in_doubt_page_of(
        &self,
        p: &ParticipantId,
        after: &str,
        size: usize,
    ) -> Result<InDoubtPage, String> {
        let ch = self
            .channel(p)
            .ok_or_else(|| "no channel to it".to_owned())?;
        let r = self
            .participant_admin(ch)
            .in_doubt(timed(pb::InDoubtRequest {
                page_size: size as u32,
                page_token: after.to_owned(),
            }))
            .await
            .map_err(|s| {
                crate::outcome::call_failure(p.as_str(), &s, crate::admin::ADMIN_RPC_TIMEOUT)
            })?
            .into_inner();
        Ok(InDoubtPage {
            more: !r.next_page_token.is_empty(),
            txns: r.txns,
        })
    }

    /// Prepared txns at every participant that answers, every page of each (bounded by the
    /// participants' own limits on prepared txns), and the participants that did not answer.
    pub(crate) async fn in_doubt_everywhere_checked(&self) -> (InDoubtMap, Vec<pb::Unanswered>) {
        let mut out = InDoubtMap::new();
        let mut unanswered = Vec::new();
        for p in self.ids() {
            let mut after = String::new();
            for _ in 0..MAX_IN_DOUBT_PAGES {
                match self.in_doubt_page_of(&p, &after, MAX_PAGE).await {
                    Ok(page) => {
                        after = page
                            .txns
                            .last()
                            .map(|t| t.txn_id.clone())
                            .unwrap_or_default();
                        add_in_doubt(&mut out, &p, page.txns);
                        if !page.more || after.is_empty() {
                            break;
                        }
                    }
                    Err(error) => {
                        unanswered.push(pb::Unanswered {
                            participant: p.to_string(),
                            error,
                        });
                        break;
                    }
                }
            }
        }
        (out, unanswered)
    }

    /// Prepared txns at every participant that answers (see
    /// [`AdminService::in_doubt_everywhere_checked`]).
    pub(crate) async fn in_doubt_everywhere(&self) -> InDoubtMap {
        let (map, unanswered) = self.in_doubt_everywhere_checked().await;
        for u in unanswered {
            tracing::warn!(participant = %u.participant, error = %u.error, "could not read its in-doubt txns");
        }
        map
    }

    /// One page of ListTxns: the coordinator's own txns and, if the filter wants them, those in
    /// doubt at the participants, in txn id order after `token`.
    pub async fn admin_list_txns(
        &self,
        filter: TxnFilter,
        size: usize,
        token: &str,
    ) -> Result<pb::ListTxnsResponse, CoordError> {
        if !token.is_empty() {
            TxnId::parse("page_token", token)?;
        }
        let known = self.core().list();
        let known_ids: HashSet<String> = known.iter().map(|(t, ..)| t.to_string()).collect();
        let mut rows: BTreeMap<String, pb::TxnSummary> = BTreeMap::new();
        for (txn, view, participants, age) in known {
            let kind = TxnKind::of(&view);
            if txn.as_str() > token && filter.admits(kind) {
                rows.insert(
                    txn.to_string(),
                    pb::TxnSummary {
                        txn_id: txn.to_string(),
                        state: kind.to_wire() as i32,
                        participants: participants.iter().map(|p| p.to_string()).collect(),
                        age_ms: age.as_millis() as u64,
                    },
                );
            }
        }
        let mut unanswered = Vec::new();
        // The last id every participant's page reaches: beyond it a participant may hold txns
        // this page has not seen, so the page stops there.
        let mut boundary: Option<String> = None;
        if filter.wants_in_doubt() {
            let mut in_doubt = InDoubtMap::new();
            for p in self.ids() {
                match self.in_doubt_page_of(&p, token, size).await {
                    Ok(page) => {
                        if page.more
                            && let Some(last) = page.txns.last()
                            && boundary.as_ref().is_none_or(|b| last.txn_id < *b)
                        {
                            boundary = Some(last.txn_id.clone());
                        }
                        add_in_doubt(&mut in_doubt, &p, page.txns);
                    }
                    Err(error) => unanswered.push(pb::Unanswered {
                        participant: p.to_string(),
                        error,
                    }),
                }
            }
            for (txn, (participants, age, _)) in in_doubt {
                if !known_ids.contains(&txn) {
                    rows.insert(
                        txn.clone(),
                        pb::TxnSummary {
                            txn_id: txn,
                            state: TxnKind::InDoubt.to_wire() as i32,
                            participants,
                            age_ms: age,
                        },
                    );
                }
            }
        }
        let mut txns = Vec::new();
        let mut filled = false;
        for t in rows.into_values() {
            if boundary.as_ref().is_some_and(|b| t.txn_id > *b) {
                break;
            }
            if txns.len() == size {
                filled = true;
                break;
            }
            txns.push(t);
        }
        // Full: go on after the last one. Otherwise everything up to the boundary is covered,
        // even if the filter or the coordinator's own view left nothing of it to show.
        let next_page_token = match (filled, boundary) {
            (true, _) => txns.last().map(|t| t.txn_id.clone()).unwrap_or_default(),
            (false, Some(b)) => b,
            (false, None) => String::new(),
        };
        Ok(pb::ListTxnsResponse {
            txns,
            next_page_token,
            unanswered,
        })
    }

    /// One page of ListSagas: unfinished sagas, then ended ones still kept, each in id order,
    /// after `token`; reading at most [`SAGA_SCAN_BUDGET`] records.
    pub async fn admin_list_sagas(
        &self,
        filter: SagaFilter,
        size: usize,
        token: &str,
    ) -> Result<pb::ListSagasResponse, CoordError> {
        let prefixes = [SAGA_PREFIX, ENDED_SAGA_PREFIX];
        let (mut phase, mut start) = saga_token(token)?;
        let mut sagas = Vec::new();
        let mut budget = SAGA_SCAN_BUDGET;
        while phase < prefixes.len() {
            let prefix = prefixes[phase];
            let wanted = if phase == 0 {
                [
                    SagaState::Running,
                    SagaState::Compensating,
                    SagaState::Parked,
                ]
                .iter()
                .any(|s| filter.admits(*s))
            } else {
                [SagaState::Completed, SagaState::Compensated]
                    .iter()
                    .any(|s| filter.admits(*s))
            };
            let start_key = [prefix, start.as_bytes()].concat();
            let chunk = if wanted {
                self.check(
                    self.gc
                        .scan_page(prefix, &start_key, SAGA_SCAN_CHUNK.min(budget))
                        .await,
                )?
            } else {
                Vec::new()
            };
            // Only an empty chunk ends a phase: over etcd, a chunk may come back short before
            // the end (this instance's pending deletes are merged into etcd's answer).
            let done = chunk.is_empty();
            for (key, bytes) in &chunk {
                budget -= 1;
                let rec: SagaRecord = self.check(record::decode(key, bytes).map_err(Into::into))?;
                if filter.admits(saga_state(&rec)) {
                    sagas.push(saga_summary(&rec));
                }
                if sagas.len() == size || budget == 0 {
                    // The next page may turn out empty; only an empty token ends the list.
                    return Ok(pb::ListSagasResponse {
                        sagas,
                        next_page_token: String::from_utf8_lossy(key).into_owned(),
                    });
                }
            }
            match chunk.last() {
                Some((last, _)) if !done => {
                    start = format!("{}\0", String::from_utf8_lossy(&last[prefix.len()..]));
                }
                _ => {
                    phase += 1;
                    start = String::new();
                }
            }
        }
        Ok(pb::ListSagasResponse {
            sagas,
            next_page_token: String::new(),
        })
    }
}

/// Adds `p`'s prepared txns to `map`.
fn add_in_doubt(map: &mut InDoubtMap, p: &ParticipantId, txns: Vec<pb::InDoubtTxn>) {
    for t in txns {
        let e = map.entry(t.txn_id.clone()).or_default();
        if e.0.is_empty() {
            e.0 = t.participants.clone();
        }
        e.1 = e.1.max(t.age_ms);
        e.2.push(pb::InDoubtTxn {
            participants: vec![p.to_string()],
            ..t
        });
    }
}

/// Where a ListSagas page starts: the log (0 unfinished, 1 ended) and the position in it
/// (`ID\0`, just after the token's saga, or "" from the first).
fn saga_token(token: &str) -> Result<(usize, String), InvalidInput> {
    if token.is_empty() {
        return Ok((0, String::new()));
    }
    let bad = || {
        InvalidInput::new(
            "page_token",
            format!("{token:?} is not a token of ListSagas (pass next_page_token as it came)"),
        )
    };
    let (phase, id) = if let Some(id) = token.strip_prefix("se/") {
        (1, id)
    } else if let Some(id) = token.strip_prefix("s/") {
        (0, id)
    } else {
        return Err(bad());
    };
    TxnId::parse("page_token", id).map_err(|_| bad())?;
    Ok((phase, format!("{id}\0")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_cap_and_fall_back_to_limit() {
        assert_eq!(page_size(0, 0), DEFAULT_PAGE);
        assert_eq!(page_size(0, 7), 7);
        assert_eq!(page_size(5, 7), 5);
        assert_eq!(page_size(1_000_000, 0), MAX_PAGE);
    }

    #[test]
    fn saga_tokens_name_the_log_and_refuse_anything_else() {
        assert_eq!(saga_token("").unwrap(), (0, String::new()));
        assert_eq!(saga_token("s/1.5").unwrap(), (0, "1.5\0".into()));
        assert_eq!(saga_token("se/1.5").unwrap(), (1, "1.5\0".into()));
        for bad in ["x/1.5", "s/", "se/bad id", "1.5"] {
            assert_eq!(saga_token(bad).unwrap_err().field, "page_token", "{bad}");
        }
    }
}
