//! The participant's listings, a page at a time: its saga barriers and outcomes (for checkers)
//! and the `ParticipantAdmin` service (in-doubt txns for operators, holds). Each page is
//! bounded in entries and in bytes, well inside the message limit.

use tonic::{Request, Response, Status};
use txn_proto::convert::OrInvalidArgument;
use txn_proto::pb::v1 as pb;
use txn_types::types::TxnId;

use crate::housekeeping::MAX_PAGE_BYTES;
use crate::node::{MAX_OUTCOMES_PAGE, Participant};
use crate::service::{ParticipantService, state_to_pb};

/// One page of ListBarriers.
pub(crate) fn barriers_page(
    node: &Participant,
    r: pb::ListBarriersRequest,
) -> Result<pb::ListBarriersResponse, Status> {
    use txn_types::rec::BarrierKind;
    let limit = if r.limit == 0 {
        MAX_OUTCOMES_PAGE
    } else {
        r.limit as usize
    };
    let start = if r.start_after.is_empty() {
        Vec::new()
    } else {
        [r.start_after.as_slice(), b"\0"].concat()
    };
    let page = node.list_barriers(&start, limit)?;
    let next = if page.len() >= limit.min(MAX_OUTCOMES_PAGE) {
        page.last().map(|(k, _)| k.clone()).unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut barriers = Vec::with_capacity(page.len());
    for (key, rec) in page {
        // Keys are b/<saga>/<step>/<x|c>.
        let text = String::from_utf8_lossy(&key).into_owned();
        let mut parts = text
            .split_once('/')
            .map(|x| x.1)
            .unwrap_or("")
            .rsplitn(3, '/');
        let action = parts.next().unwrap_or("");
        let step = parts
            .next()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(u32::MAX);
        let saga_id = parts.next().unwrap_or("").to_owned();
        let action = match action {
            "x" => pb::BarrierAction::Execute,
            "c" => pb::BarrierAction::Compensate,
            _ => pb::BarrierAction::Unspecified,
        };
        let outcome = match BarrierKind::try_from(rec.kind) {
            Ok(BarrierKind::Executed) => pb::BarrierOutcome::Executed,
            Ok(BarrierKind::ExecuteFailed) => pb::BarrierOutcome::ExecuteFailed,
            Ok(BarrierKind::Compensated) => pb::BarrierOutcome::Compensated,
            Ok(BarrierKind::NullCompensated) => pb::BarrierOutcome::NullCompensated,
            _ => pb::BarrierOutcome::Unspecified,
        };
        barriers.push(pb::Barrier {
            saga_id,
            step,
            action: action as i32,
            outcome: outcome as i32,
            at_unix_ms: rec.at_unix_ms,
        });
    }
    Ok(pb::ListBarriersResponse { barriers, next })
}

/// One page of ListOutcomes: at most `limit` outcomes and [`MAX_PAGE_BYTES`].
pub(crate) fn outcomes_page(
    node: &Participant,
    r: pb::ListOutcomesRequest,
) -> Result<pb::ListOutcomesResponse, Status> {
    let limit = if r.limit == 0 {
        MAX_OUTCOMES_PAGE
    } else {
        r.limit as usize
    };
    let page = node.list_outcomes(&r.start_after, limit)?;
    let full = page.len() >= limit.min(MAX_OUTCOMES_PAGE);
    let read = page.len();
    let mut outcomes = Vec::with_capacity(page.len());
    let mut bytes = 0;
    for o in page {
        let o = pb::TxnOutcome {
            txn_id: o.txn_id,
            state: state_to_pb(o.status) as i32,
            participants: o.facts.participants,
            writes: o.facts.writes,
            at_unix_ms: o.at_unix_ms,
            prepared_at_unix_ms: o.facts.prepared_at_unix_ms,
        };
        bytes += prost::Message::encoded_len(&o) + 4;
        if !outcomes.is_empty() && bytes > MAX_PAGE_BYTES {
            break;
        }
        outcomes.push(o);
    }
    // Cut short by the byte budget: the rest comes with the next page.
    let cut = outcomes.len() < read;
    let next = if full || cut {
        outcomes
            .last()
            .map(|o| o.txn_id.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(pb::ListOutcomesResponse { outcomes, next })
}

#[tonic::async_trait]
impl pb::participant_admin_server::ParticipantAdmin for ParticipantService {
    async fn in_doubt(
        &self,
        request: Request<pb::InDoubtRequest>,
    ) -> Result<Response<pb::InDoubtResponse>, Status> {
        let r = request.into_inner();
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(TxnId::parse("page_token", &r.page_token).or_invalid()?)
        };
        let size = match r.page_size {
            0 => crate::housekeeping::IN_DOUBT_PAGE,
            n => n as usize,
        };
        let (page, next) = self.node.in_doubt_page(after.as_ref(), size);
        let txns = page
            .into_iter()
            .map(|t| pb::InDoubtTxn {
                txn_id: t.txn.to_string(),
                age_ms: t.age_ms,
                participants: t.participants,
                locked_keys: t.locked_keys,
                coordinator_epoch: t.coordinator_epoch,
                held: t.held,
                commit_at_votes: t.commit_at_votes,
            })
            .collect();
        Ok(Response::new(pb::InDoubtResponse {
            txns,
            next_page_token: next.map(|t| t.to_string()).unwrap_or_default(),
        }))
    }

    async fn hold(
        &self,
        request: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        let state = state_to_pb(self.node.hold(&txn).await?);
        Ok(Response::new(pb::HoldResponse {
            state: state as i32,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::HoldResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        let state = state_to_pb(self.node.release(&txn)?);
        Ok(Response::new(pb::HoldResponse {
            state: state as i32,
        }))
    }

    async fn forget_consumer(
        &self,
        request: Request<pb::ForgetConsumerRequest>,
    ) -> Result<Response<pb::ForgetConsumerResponse>, Status> {
        let consumer =
            crate::feed_service::consumer_name(&request.into_inner().consumer).or_invalid()?;
        let forgotten = self.node.forget_consumer(&consumer).await?;
        Ok(Response::new(pb::ForgetConsumerResponse { forgotten }))
    }
}
