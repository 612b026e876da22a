//! The gRPC face of the change feed (`EventFeed`) and of the events protocol's requests:
//! converts and checks protobuf, nothing more.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};
use txn_participant_core::outbox::MAX_CONSUMER_NAME_LEN;
use txn_participant_core::transfer::TransferRequest;
use txn_proto::convert::{OrInvalidArgument, ops_from_pb};
use txn_proto::pb::v1 as pb;
use txn_types::types::{InvalidInput, ParticipantId, TxnId, check_name};

use crate::feed::MAX_FEED_BATCH;
use crate::node::Participant;
use crate::subscribe::Subscription;

/// A consumer's name: the same rules as a participant's.
pub fn consumer_name(raw: &str) -> Result<String, InvalidInput> {
    check_name("consumer", raw, MAX_CONSUMER_NAME_LEN)?;
    Ok(raw.to_owned())
}

/// A checked StartTransfer: this participant is the source.
pub fn transfer_from_pb(
    node: &Participant,
    r: pb::StartTransferRequest,
) -> Result<TransferRequest, InvalidInput> {
    let id = TxnId::parse("transfer_id", &r.transfer_id)?;
    let destination = ParticipantId::parse("destination", &r.destination)?;
    let source = ParticipantId::parse("source", &node.config.name)?;
    if destination == source {
        return Err(InvalidInput::new(
            "destination",
            format!("is this participant ({source}); a transfer here is a one-branch txn"),
        ));
    }
    Ok(TransferRequest {
        id,
        source,
        destination,
        source_ops: ops_from_pb("ops", r.ops)?,
        destination_ops: ops_from_pb("destination_ops", r.destination_ops)?,
    })
}

/// The `EventFeed` service of one participant.
#[derive(Clone)]
pub struct FeedService {
    node: Arc<Participant>,
}

impl FeedService {
    pub fn new(node: Arc<Participant>) -> Self {
        Self { node }
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::EventBatch, Status>> + Send>>;

fn batch_size(raw: u32) -> usize {
    match raw as usize {
        0 => MAX_FEED_BATCH,
        n => n.min(MAX_FEED_BATCH),
    }
}

#[tonic::async_trait]
impl pb::event_feed_server::EventFeed for FeedService {
    type SubscribeStream = BatchStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = request.into_inner();
        let filter = if r.for_participant.is_empty() {
            None
        } else {
            Some(ParticipantId::parse("for_participant", &r.for_participant).or_invalid()?)
        };
        let consumer = consumer_name(&r.consumer).or_invalid()?;
        let from = match r.resume {
            true => self.node.resume_point(&consumer)?.unwrap_or(r.from_offset),
            false => r.from_offset,
        };
        let sub = Subscription {
            consumer,
            from,
            filter: filter.map(|p| p.to_string()),
            max_batch: batch_size(r.max_batch),
        };
        let stream = self.node.subscribe(sub).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let r = request.into_inner();
        let consumer = consumer_name(&r.consumer).or_invalid()?;
        let acked = self.node.ack_events(&consumer, r.offset).await?;
        Ok(Response::new(pb::AckResponse { acked }))
    }

    async fn read_events(
        &self,
        request: Request<pb::ReadEventsRequest>,
    ) -> Result<Response<pb::EventBatch>, Status> {
        let r = request.into_inner();
        Ok(Response::new(
            self.node.read_feed(r.from_offset, batch_size(r.limit))?,
        ))
    }

    async fn feed_status(
        &self,
        _request: Request<pb::FeedStatusRequest>,
    ) -> Result<Response<pb::FeedStatusResponse>, Status> {
        let s = self.node.feed_status()?;
        Ok(Response::new(pb::FeedStatusResponse {
            participant: self.node.config.name.clone(),
            head: s.head,
            floor: s.floor,
            consumers: s.consumers,
            inboxes: s.inboxes,
            unsettled_transfers: s.unsettled_transfers,
        }))
    }
}
