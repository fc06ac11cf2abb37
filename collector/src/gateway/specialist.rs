//! `vitals.v1.Specialist` over gRPC: maps requests to the specialist service
//! and its errors to gRPC statuses, in one place.

use tonic::{Request, Response, Status};
use vitals_proto::identity::Identity;
use vitals_proto::shutdown::Shutdown;
use vitals_proto::wire;
use vitals_proto::wire::specialist_server::Specialist;

use crate::service::{Caller, ServiceError, SpecialistService};
use crate::store::TicketFilter;
use crate::tickets::engine::Action;
use vitals_proto::tickets::Status as TicketStatus;

pub struct SpecialistApi {
    service: SpecialistService,
    /// Requested when the collector stops: open watch streams end then.
    stop: Shutdown,
    /// Calls refused for taking too much, said once a minute per caller.
    refusals: std::sync::Arc<super::refusals::Refusals>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl SpecialistApi {
    pub fn new(
        service: SpecialistService,
        stop: Shutdown,
        refusals: std::sync::Arc<super::refusals::Refusals>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        SpecialistApi {
            service,
            stop,
            refusals,
            metrics,
        }
    }
}

impl SpecialistApi {
    /// Only specialist certificates may call this service; an agent
    /// certificate is refused whatever it asks, and so is a certificate
    /// revoked since its connection's handshake.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let conn = super::conn(request)?;
        if let Some(why) = self.service.certificate_refusal(&conn.identity, &conn.cert) {
            return Err(Status::permission_denied(why));
        }
        match &conn.identity {
            Identity::Specialist { name, role } => Ok(Caller::everywhere(name.clone(), *role)),
            Identity::Endpoint(id) => Err(Status::permission_denied(format!(
                "endpoint {id} holds an agent certificate; the Specialist API needs a specialist certificate"
            ))),
        }
    }
}

fn detail(d: vitals_proto::tickets::TicketDetail) -> wire::TicketDetail {
    d.into()
}

/// Empty strings in requests mean "not given".
fn given(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::Forbidden { .. } => Status::permission_denied(e.to_string()),
        ServiceError::OutOfScope(m) => Status::permission_denied(m),
        ServiceError::NotFound(m) => Status::not_found(m),
        ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
        ServiceError::Unavailable(m) => Status::unavailable(m),
        ServiceError::Offline(m) => Status::failed_precondition(m),
        ServiceError::DeadlineExceeded(_) => Status::deadline_exceeded(e.to_string()),
        ServiceError::Aborted(m) => Status::aborted(m),
        ServiceError::Busy(m) => Status::resource_exhausted(m),
        ServiceError::Store(err) => {
            tracing::error!(error = %err, "specialist request failed in storage");
            Status::internal("storage error; see the collector log")
        }
    }
}

#[tonic::async_trait]
impl Specialist for SpecialistApi {
    async fn list_endpoints(
        &self,
        request: Request<wire::ListEndpointsRequest>,
    ) -> Result<Response<wire::ListEndpointsResponse>, Status> {
        let caller = self.caller(&request)?;
        let list = self
            .service
            .list_endpoints(&caller, request.get_ref().online_only)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ListEndpointsResponse {
            endpoints: list.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_endpoint(
        &self,
        request: Request<wire::GetEndpointRequest>,
    ) -> Result<Response<wire::EndpointDetail>, Status> {
        let caller = self.caller(&request)?;
        let detail = self
            .service
            .endpoint(&caller, &request.get_ref().endpoint_id)
            .await
            .map_err(status)?;
        Ok(Response::new(detail.into()))
    }

    async fn endpoint_history(
        &self,
        request: Request<wire::EndpointHistoryRequest>,
    ) -> Result<Response<wire::EndpointHistoryResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let entries = self
            .service
            .history(&caller, &r.endpoint_id, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::EndpointHistoryResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    async fn endpoint_faults(
        &self,
        request: Request<wire::EndpointFaultsRequest>,
    ) -> Result<Response<wire::EndpointFaultsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.get_ref();
        let faults = self
            .service
            .faults(&caller, &r.endpoint_id, r.limit)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::EndpointFaultsResponse {
            faults: faults.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_tickets(
        &self,
        request: Request<wire::ListTicketsRequest>,
    ) -> Result<Response<wire::ListTicketsResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        if let Some(s) = given(&r.status)
            && s.parse::<TicketStatus>().is_err()
        {
            return Err(Status::invalid_argument(format!("unknown status \"{s}\"")));
        }
        let filter = TicketFilter {
            open_only: r.open_only,
            endpoint: given(&r.endpoint_id),
            check_id: given(&r.check_id),
            incident: r.incident,
            status: given(&r.status),
            priority: given(&r.priority).map(|p| p.to_lowercase()),
            assignee: given(&r.assignee),
            unassigned: false,
            limit: r.limit,
        };
        let tickets = self
            .service
            .tickets(&caller, filter)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ListTicketsResponse {
            tickets: tickets.iter().map(Into::into).collect(),
        }))
    }

    async fn get_ticket(
        &self,
        request: Request<wire::GetTicketRequest>,
    ) -> Result<Response<wire::TicketDetail>, Status> {
        let caller = self.caller(&request)?;
        let d = self
            .service
            .ticket(&caller, request.get_ref().id)
            .await
            .map_err(status)?;
        Ok(Response::new(detail(d)))
    }

    async fn update_ticket(
        &self,
        request: Request<wire::UpdateTicketRequest>,
    ) -> Result<Response<wire::TicketDetail>, Status> {
        use wire::update_ticket_request::Action as A;
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let action = match r.action {
            Some(A::Assign(to)) => Action::Assign(to),
            Some(A::Comment(text)) => Action::Comment(text),
            Some(A::Resolve(notes)) => Action::Resolve(notes),
            Some(A::Escalate(_)) => Action::Escalate,
            Some(A::Reopen(reason)) => Action::Reopen(reason),
            Some(A::Status(s)) => Action::Status(
                s.parse()
                    .map_err(|_| Status::invalid_argument(format!("unknown status \"{s}\"")))?,
            ),
            None => return Err(Status::invalid_argument("no action given")),
        };
        let d = self
            .service
            .act(&caller, r.id, action)
            .await
            .map_err(status)?;
        Ok(Response::new(detail(d)))
    }

    async fn open_ticket(
        &self,
        request: Request<wire::OpenTicketRequest>,
    ) -> Result<Response<wire::TicketDetail>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let severity = match r.severity {
            0 => vitals_proto::domain::Severity::Warning,
            s => vitals_proto::convert::severity_from_wire_i32(s),
        };
        let d = self
            .service
            .open_ticket(&caller, &r.endpoint_id, &r.title, severity, &r.description)
            .await
            .map_err(status)?;
        Ok(Response::new(detail(d)))
    }

    type WatchTicketsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<wire::TicketEntry, Status>> + Send + 'static>,
    >;

    async fn watch_tickets(
        &self,
        request: Request<wire::WatchTicketsRequest>,
    ) -> Result<Response<Self::WatchTicketsStream>, Status> {
        let caller = self.caller(&request)?;
        let mut rx = self.service.watch(&caller).map_err(status)?;
        let mut stop = self.stop.clone();
        let (tx, out) = tokio::sync::mpsc::channel(64);
        // Forwards changes until the client goes away or the collector stops.
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    r = rx.recv() => r,
                    () = stop.requested() => return,
                };
                let msg = match item {
                    Ok(entry) => Ok(wire::TicketEntry::from(&entry)),
                    // A watcher too slow for the change rate is told, not
                    // silently skipped.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Err(Status::resource_exhausted(format!(
                            "{n} changes missed; watch again and list"
                        )))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let last = msg.is_err();
                if tx.send(msg).await.is_err() || last {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }

    type RunDiagnosticStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<wire::DiagnosticEvent, Status>> + Send>,
    >;

    async fn run_diagnostic(
        &self,
        request: Request<wire::RunDiagnosticRequest>,
    ) -> Result<Response<Self::RunDiagnosticStream>, Status> {
        use crate::service::{DiagEvent, DiagRequest};
        use wire::diagnostic_event::Body;
        let caller = self.caller(&request)?;
        let remote = super::conn(&request)?.remote;
        let r = request.into_inner();
        let mut events = self
            .service
            .run_diagnostic(
                &caller,
                DiagRequest {
                    endpoint: r.endpoint_id,
                    kind: r.kind,
                    params: r.params.into_iter().collect(),
                    deadline: std::time::Duration::from_millis(r.deadline_ms),
                    wait_offline: std::time::Duration::from_millis(r.wait_offline_ms),
                    ticket: r.ticket,
                },
            )
            .await
            .map_err(|e| {
                if let ServiceError::Busy(why) = &e {
                    self.refusals.refused(
                        &self.metrics,
                        "diagnostics_per_specialist",
                        &caller.name,
                        remote,
                        why,
                    );
                }
                status(e)
            })?;
        let (tx, out) = tokio::sync::mpsc::channel(64);
        // Dropping `events` (the client went away) cancels the run.
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let msg = match e {
                    Ok(DiagEvent::Progress { text, elapsed_ms }) => Ok(wire::DiagnosticEvent {
                        body: Some(Body::Progress(text)),
                        elapsed_ms,
                    }),
                    Ok(DiagEvent::Result { result, elapsed_ms }) => Ok(wire::DiagnosticEvent {
                        body: Some(Body::Result(result.into())),
                        elapsed_ms,
                    }),
                    Err(e) => Err(status(e)),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit(
        &self,
        request: Request<wire::ListAuditRequest>,
    ) -> Result<Response<wire::ListAuditResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let entries = self
            .service
            .audit(
                &caller,
                crate::store::AuditFilter {
                    endpoint: r.endpoint_id,
                    who: r.who,
                    kind: r.kind,
                    limit: if r.limit == 0 { 50 } else { r.limit },
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ListAuditResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    async fn revoke_endpoint(
        &self,
        request: Request<wire::RevokeEndpointRequest>,
    ) -> Result<Response<wire::EndpointDetail>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let d = self
            .service
            .revoke_endpoint(&caller, &r.endpoint_id, &r.reason)
            .await
            .map_err(status)?;
        Ok(Response::new(d.into()))
    }

    async fn bind_endpoint(
        &self,
        request: Request<wire::BindEndpointRequest>,
    ) -> Result<Response<wire::EndpointDetail>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let d = self
            .service
            .bind_endpoint(&caller, &r.endpoint_id, &r.machine_id)
            .await
            .map_err(status)?;
        Ok(Response::new(d.into()))
    }

    async fn renew_certificate(
        &self,
        request: Request<wire::RenewCertificate>,
    ) -> Result<Response<wire::IssuedCertificate>, Status> {
        self.caller(&request)?;
        let conn = super::conn(&request)?.clone();
        let r = request.into_inner();
        let issued = self
            .service
            .renew_certificate(&conn.identity, &conn.cert, &r.csr_pem)
            .await
            .map_err(status)?;
        Ok(Response::new(issued.into()))
    }
}
