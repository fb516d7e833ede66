//! The `Schedules` service: recurring instance creation (`schedules.rs` fires them). Every
//! call needs the policy's `manage_schedules`, checked by `AuthLayer`.

use lockstep_core::schedule::{
    CATCH_UP_WINDOW_DEFAULT_MS, CatchUp, Compiled, Overlap, Schedule, ScheduleSpec, Tick,
    TickOutcome,
};
use lockstep_raft::ScheduleOp;

use super::*;

/// `catch_up_max` when a create leaves it out.
const CATCH_UP_MAX_DEFAULT: u32 = 10;

fn tick_pb(t: &Tick) -> pb::ScheduleTick {
    pb::ScheduleTick {
        at: t.at.to_string(),
        local: t.local.clone(),
    }
}

pub(crate) fn schedule_pb(s: Schedule) -> pb::Schedule {
    let paused = s.paused.as_ref();
    let spec = &s.spec;
    let description = Compiled::new(&spec.cron, &spec.time_zone)
        .map(|c| c.describe())
        .unwrap_or_else(|e| e);
    let (last_outcome, last_detail) = match s.last.as_ref().map(|l| &l.outcome) {
        None => (String::new(), String::new()),
        Some(TickOutcome::Created { instance_id }) => ("created".into(), instance_id.clone()),
        Some(TickOutcome::Refused { code, message }) => {
            ("refused".into(), format!("{code}: {message}"))
        }
        Some(TickOutcome::Skipped { reason }) => ("skipped".into(), reason.clone()),
    };
    pb::Schedule {
        name: spec.name.clone(),
        cron: spec.cron.clone(),
        description,
        time_zone: spec.time_zone.clone(),
        calendar: spec.calendar.clone().unwrap_or_default(),
        workflow: spec.workflow.clone(),
        data_json: spec.data.to_string(),
        key: spec.key.clone().unwrap_or_default(),
        overlap: spec.overlap.name().into(),
        catch_up: spec.catch_up.name().into(),
        catch_up_max: spec.catch_up_max,
        catch_up_window_ms: spec.catch_up_window_ms,
        next: s.next.as_ref().map(tick_pb),
        last: s.last.as_ref().map(|l| tick_pb(&l.tick)),
        last_acted_at: s
            .last
            .as_ref()
            .map(|l| l.acted_at.to_string())
            .unwrap_or_default(),
        last_outcome,
        last_detail,
        fired: s.fired,
        skipped: s.skipped,
        refused: s.refused,
        paused: paused.is_some(),
        paused_by: paused.map(|p| p.by.clone()).unwrap_or_default(),
        paused_reason: paused.map(|p| p.reason.clone()).unwrap_or_default(),
        paused_at: paused.map(|p| p.at.to_string()).unwrap_or_default(),
        created_by: s.created_by,
        created_at: s.created_at.to_string(),
    }
}

/// A create request as a spec, checked as apply will check it (but for the workflow and the
/// calendar, which only the replicated state knows).
fn spec_of(req: pb::CreateScheduleRequest) -> Result<ScheduleSpec, Status> {
    let data = if req.data_json.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&req.data_json)
            .map_err(|e| status::bad_request(format!("data_json is not JSON: {e}")))?
    };
    let spec = ScheduleSpec {
        name: req.name,
        cron: req.cron,
        time_zone: if req.time_zone.is_empty() {
            "UTC".into()
        } else {
            req.time_zone
        },
        calendar: Some(req.calendar).filter(|c| !c.is_empty()),
        workflow: req.workflow,
        data,
        key: Some(req.key).filter(|k| !k.is_empty()),
        overlap: Overlap::parse(&req.overlap).map_err(status::bad_request)?,
        catch_up: CatchUp::parse(&req.catch_up).map_err(status::bad_request)?,
        catch_up_max: if req.catch_up_max == 0 {
            CATCH_UP_MAX_DEFAULT
        } else {
            req.catch_up_max
        },
        catch_up_window_ms: if req.catch_up_window_ms == 0 {
            CATCH_UP_WINDOW_DEFAULT_MS
        } else {
            req.catch_up_window_ms
        },
    };
    spec.check().map_err(status::bad_request)?;
    Ok(spec)
}

fn unknown(name: &str) -> Status {
    status::refusal(&lockstep_core::Refusal::new(
        RefusalCode::UnknownSchedule,
        format!("no schedule is named `{name}`; `lockstep schedules list` shows them"),
    ))
}

impl Api {
    fn require_schedules_format(&self) -> Result<(), Status> {
        self.require_format(
            lockstep_raft::format::LOG_FORMAT_SCHEDULES,
            "Schedules",
            "upgrade every member first",
        )
    }

    /// A schedule change through the log, answered with the schedule.
    async fn change_schedule(
        &self,
        metadata: &MetadataMap,
        request_id: &str,
        op: ScheduleOp,
    ) -> Result<Response<pb::Schedule>, Status> {
        self.require_schedules_format()?;
        self.write(metadata, request_id, Body::Schedules(op))
            .await?
            .respond(|applied| match applied {
                Applied::Schedule(s) => Ok(Response::new(schedule_pb(*s))),
                Applied::Refused(r) => Err(status::refusal(&r)),
                other => Err(Status::internal(format!(
                    "unexpected outcome of a schedule change: {other:?}"
                ))),
            })
    }
}

#[tonic::async_trait]
impl pb::schedules_server::Schedules for Api {
    async fn create(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let actor = self.actor(request.extensions())?;
        self.require_schedules_format()?;
        let (metadata, _, req) = request.into_parts();
        let request_id = req.request_id.clone();
        let spec = spec_of(req)?;
        self.change_schedule(&metadata, &request_id, ScheduleOp::Create { spec, actor })
            .await
    }

    async fn list(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        self.read_info(0).await?;
        let schedules = read::schedules(&*self.node.store)
            .map_err(status::store_error)?
            .into_iter()
            .map(schedule_pb)
            .collect();
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn get(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let name = request.into_inner().name;
        self.read_info(0).await?;
        match read::schedule(&*self.node.store, &name).map_err(status::store_error)? {
            Some(s) => Ok(Response::new(schedule_pb(s))),
            None => Err(unknown(&name)),
        }
    }

    async fn pause(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let reason = if req.reason.is_empty() {
            format!("paused by {}", actor.id)
        } else {
            req.reason
        };
        let op = ScheduleOp::Pause {
            name: req.name,
            reason,
            actor,
        };
        self.change_schedule(&metadata, &req.request_id, op).await
    }

    async fn resume(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let op = ScheduleOp::Resume {
            name: req.name,
            actor,
        };
        self.change_schedule(&metadata, &req.request_id, op).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let actor = self.actor(request.extensions())?;
        let (metadata, _, req) = request.into_parts();
        let op = ScheduleOp::Delete {
            name: req.name,
            actor,
        };
        self.change_schedule(&metadata, &req.request_id, op).await
    }
}
