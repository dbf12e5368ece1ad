//! `flash.loyalty.v1.Events`.
use super::proto::{self, events_server::Events as EventsRpc};
use super::timestamp;
use crate::domain::ProgramId;
use crate::service::{Error, EventView, Events};
use std::pin::Pin;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The gRPC adapter of the event stream.
pub struct EventsApi {
    events: Events,
}

impl EventsApi {
    pub fn new(events: Events) -> Self {
        Self { events }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventsRpc for EventsApi {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (_, request) = super::auth::admit(request)?;
        let program = ProgramId::parse(&request.program_id).map_err(Error::from)?;
        let receiver = self
            .events
            .subscribe(program, &request.after_cursor, &request.event_types)
            .await?;
        let stream = ReceiverStream::new(receiver).map(|item| {
            item.map(|event| proto::SubscribeResponse {
                event: Some(event_message(event)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn event_message(event: EventView) -> proto::Event {
    proto::Event {
        event_id: event.event_id.to_string(),
        cursor: event.cursor,
        program_id: event.program_id,
        member_id: event
            .member_id
            .map(|member| member.to_string())
            .unwrap_or_default(),
        event_type: event.event_type,
        payload_json: event.payload.to_string(),
        created_at: Some(timestamp(event.created_at)),
    }
}
