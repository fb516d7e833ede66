//! The console's pages. Each one authenticates as the gRPC call it stands for and calls that
//! call's handler on [`Api`](crate::api::Api) (see the module above); what a page shows is
//! exactly what that call answers the caller.

use std::collections::BTreeSet;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use lockstep_core::CompiledDefinition;
use lockstep_proto::v1 as pb;
use maud::{Markup, html};
use pb::audit_server::Audit;
use pb::cluster_server::Cluster;
use pb::definitions_server::Definitions;
use pb::instances_server::Instances;
use pb::subscriptions_server::Subscriptions;
use pb::tasks_server::Tasks;
use serde::Deserialize;

use super::graph::{self, Marks};
use super::view::{self, csrf, json_block, layout, people, query_value, short, when};
use super::{
    ACTOR_COOKIE, Caller, Console, KIND_COOKIE, ROLES_COOKIE, Refused, SIGNIN_TOKEN_BYTES_MAX,
    TOKEN_COOKIE, cookie,
};

/// Workflows the inbox looks in at once (the Inbox call's own bound).
const INBOX_WORKFLOWS_MAX: usize = 16;
/// Instances per list page.
const LIST_PAGE: u32 = 50;
/// Audit records an instance page shows (the newest are on the history page of the CLI).
const TIMELINE_MAX: u32 = 500;
/// Security-log events the audit page shows.
const SECURITY_EVENTS_SHOWN: u32 = 50;
/// Longest payload or data a form may submit.
const FORM_JSON_BYTES_MAX: usize = 256 * 1024;

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/signin", get(signin_form).post(signin))
        .route("/signout", post(signout))
        .route("/inbox", get(inbox))
        .route("/workflows", get(workflows))
        .route("/workflows/{workflow}", get(workflow))
        .route("/workflows/{workflow}/instances", post(create))
        .route("/instances", get(instances))
        .route("/instances/{id}", get(instance))
        .route("/instances/{id}/transition", post(transition))
        .route("/instances/{id}/resolve", post(resolve))
        .route("/audit", get(audit))
        .route("/cluster", get(cluster))
        .route("/subscriptions", get(subscriptions))
        .route("/subscriptions/{name}/{action}", post(change_subscription))
}

type Page = Result<Markup, Refused>;

/// The page, or its refusal, with the CSRF cookie when the browser had none.
fn respond(console: &Console, caller: &Caller, page: Page) -> Response {
    match page {
        Ok(markup) => caller.finish(console, view::page(markup)),
        Err(refused) => refused.page(caller, console),
    }
}

/// A form's page shown again with its refusal on top, answered with the refusal's status.
fn respond_refused(
    console: &Console,
    caller: &Caller,
    status: axum::http::StatusCode,
    page: Page,
) -> Response {
    let mut response = respond(console, caller, page);
    if response.status().is_success() {
        *response.status_mut() = status;
    }
    response
}

fn by_id(id: &str) -> Option<pb::InstanceRef> {
    Some(pb::InstanceRef {
        target: Some(pb::instance_ref::Target::Id(id.to_string())),
    })
}

// ---------------------------------------------------------------------------------------
// Signing in

#[derive(Deserialize)]
struct SigninForm {
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    roles: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    token: String,
}

async fn signin_form(State(console): State<Console>, caller: Caller) -> Response {
    let page = signin_page(&console, &caller, None);
    caller.finish(&console, view::page(page))
}

fn signin_page(console: &Console, caller: &Caller, refused: Option<&Refused>) -> Markup {
    let dev = console.api.node.config.dev;
    let body = html! {
        @if let Some(r) = refused { (view::refusal(r)) }
        @if dev {
            p.note {
                "Development mode: pick who you are. Anyone who reaches this node can act as anyone; "
                "a secure node takes a token or a client certificate instead."
            }
            form.card method="post" action="/signin" {
                (csrf(caller))
                label { "Actor id" input name="id" required autofocus placeholder="alice"; }
                label { "Roles (comma-separated)" input name="roles" placeholder="approver, finance"; }
                label { "Kind"
                    select name="kind" {
                        option value="human" { "human" }
                        option value="service" { "service" }
                        option value="worker" { "worker" }
                    }
                }
                button type="submit" { "Sign in" }
            }
        } @else {
            p.note {
                "Behind an SSO proxy (such as oauth2-proxy) that sets `Authorization: Bearer`, or with a "
                "client certificate from the cluster CA, you are signed in already. Otherwise paste a "
                "token from the cluster's issuer; it is kept in an HttpOnly, Secure, SameSite=Strict cookie."
            }
            form.card method="post" action="/signin" {
                (csrf(caller))
                label { "Bearer token (JWT)" textarea name="token" rows="5" required {} }
                button type="submit" { "Sign in" }
            }
        }
    };
    layout("Sign in", caller, None, body)
}

async fn signin(
    State(console): State<Console>,
    caller: Caller,
    Form(form): Form<SigninForm>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let trust = &console.api.node.trust;
    let mut headers = axum::http::HeaderMap::new();
    let mut cookies = Vec::new();
    if console.api.node.config.dev {
        let id = form.id.trim();
        let roles = form
            .roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>()
            .join(",");
        let kind = if form.kind.is_empty() {
            "human"
        } else {
            form.kind.as_str()
        };
        for (name, value) in [
            (lockstep_proto::names::ACTOR_HEADER, id),
            (lockstep_proto::names::ROLES_HEADER, roles.as_str()),
            (lockstep_proto::names::ACTOR_KIND_HEADER, kind),
        ] {
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    headers.insert(name, v);
                }
                Err(_) => {
                    let r = Refused::bad_request(format!(
                        "`{value}` cannot be sent as {name}: use printable ASCII without line breaks"
                    ));
                    return caller.finish(
                        &console,
                        view::page(signin_page(&console, &caller, Some(&r))),
                    );
                }
            }
        }
        cookies.push(cookie(&console, ACTOR_COOKIE, &query_value(id), true));
        cookies.push(cookie(&console, ROLES_COOKIE, &query_value(&roles), true));
        cookies.push(cookie(&console, KIND_COOKIE, &query_value(kind), true));
    } else {
        let token = form.token.trim();
        if token.len() > SIGNIN_TOKEN_BYTES_MAX {
            let r = Refused::bad_request(format!(
                "the token is {} bytes, more than the {SIGNIN_TOKEN_BYTES_MAX} a browser cookie holds: sign in through an SSO proxy that sends `Authorization: Bearer` instead",
                token.len()
            ));
            return caller.finish(
                &console,
                view::page(signin_page(&console, &caller, Some(&r))),
            );
        }
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(v) => {
                headers.insert(header::AUTHORIZATION, v);
            }
            Err(_) => {
                let r = Refused::bad_request(
                    "a token is printable ASCII (three base64url parts separated by dots)",
                );
                return caller.finish(
                    &console,
                    view::page(signin_page(&console, &caller, Some(&r))),
                );
            }
        }
        cookies.push(cookie(&console, TOKEN_COOKIE, token, true));
    }
    match trust.authenticate(&headers, None) {
        Ok(Some(_)) => {
            let mut response = Redirect::to("/inbox").into_response();
            for c in cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    response.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            response
        }
        Ok(None) => {
            let r = Refused::bad_request("name an actor id to sign in");
            caller.finish(
                &console,
                view::page(signin_page(&console, &caller, Some(&r))),
            )
        }
        Err(status) => {
            let r = Refused::from(status);
            caller.finish(
                &console,
                view::page(signin_page(&console, &caller, Some(&r))),
            )
        }
    }
}

#[derive(Deserialize)]
struct CsrfOnly {
    csrf: String,
}

async fn signout(
    State(console): State<Console>,
    caller: Caller,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let mut response = Redirect::to("/signin").into_response();
    for name in [TOKEN_COOKIE, ACTOR_COOKIE, ROLES_COOKIE, KIND_COOKIE] {
        if let Ok(v) = HeaderValue::from_str(&cookie(&console, name, "", false)) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

// ---------------------------------------------------------------------------------------
// Workflows and definitions

/// Every workflow (one page of Definitions/List at its largest).
async fn all_workflows(
    console: &Console,
    caller: &Caller,
) -> Result<Vec<pb::WorkflowSummary>, Refused> {
    let request = caller.request(
        console,
        "/lockstep.v1.Definitions/List",
        pb::ListDefinitionsRequest {
            page_size: crate::api::PAGE_SIZE_MAX,
            ..Default::default()
        },
    )?;
    Ok(Definitions::list(&console.api, request)
        .await?
        .into_inner()
        .workflows)
}

async fn workflows(State(console): State<Console>, caller: Caller) -> Response {
    let page = async {
        let list = all_workflows(&console, &caller).await?;
        Ok(layout(
            "Workflows",
            &caller,
            None,
            html! {
                @if list.is_empty() {
                    p.note { "No workflow is applied yet: `lockstep apply FILE` applies one." }
                }
                table {
                    thead { tr { th { "Workflow" } th { "Latest version" } th { "Versions" } th { "Applied by" } th { "Applied" } th { "Provenance" } } }
                    tbody {
                        @for w in &list {
                            @let latest = w.latest.clone().unwrap_or_default();
                            tr {
                                td { a href=(format!("/workflows/{}", query_value(&w.workflow))) { (w.workflow) } }
                                td { (short(&latest.version)) }
                                td { (w.versions) }
                                td { (latest.applied_by) }
                                td { (when(&latest.applied_at)) }
                                td { (provenance(latest.provenance.as_ref())) }
                            }
                        }
                    }
                }
            },
        ))
    }
    .await;
    respond(&console, &caller, page)
}

fn provenance(p: Option<&pb::Provenance>) -> Markup {
    match p {
        Some(p) if !p.repository.is_empty() || !p.commit.is_empty() || !p.path.is_empty() => {
            html! {
                span.provenance {
                    (p.repository)
                    @if !p.commit.is_empty() { " @ " (short(&p.commit)) }
                    @if !p.path.is_empty() { " : " code { (p.path) } }
                }
            }
        }
        _ => html! { span.muted { "not recorded" } },
    }
}

#[derive(Deserialize, Default)]
struct VersionQuery {
    #[serde(default)]
    version: String,
}

async fn workflow(
    State(console): State<Console>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Response {
    let page = workflow_page(&console, &caller, &name, &q.version, None).await;
    respond(&console, &caller, page)
}

async fn workflow_page(
    console: &Console,
    caller: &Caller,
    name: &str,
    version: &str,
    refused: Option<Refused>,
) -> Page {
    let request = caller.request(
        console,
        "/lockstep.v1.Definitions/ListVersions",
        pb::ListDefinitionVersionsRequest {
            workflow: name.to_string(),
            ..Default::default()
        },
    )?;
    let versions = Definitions::list_versions(&console.api, request)
        .await?
        .into_inner()
        .versions;
    let request = caller.request(
        console,
        "/lockstep.v1.Definitions/Get",
        pb::GetDefinitionRequest {
            workflow: name.to_string(),
            version: version.to_string(),
            ..Default::default()
        },
    )?;
    let shown = Definitions::get(&console.api, request).await?.into_inner();
    let compiled = console.api.compiled(name, &shown.version)?.ok_or_else(|| {
        Refused::bad_request(format!("version {} of {name} is not stored", shown.version))
    })?;
    // Counts kept by apply (log format 4), shown to those who may read the instances.
    let store = &*console.api.node.store;
    let readable = console
        .api
        .node
        .trust
        .policy
        .current()
        .may_read(caller.actor(), name);
    let counts = if readable
        && lockstep_raft::read::indexes_kept(store).map_err(crate::status::store_error)?
    {
        Some(lockstep_raft::read::state_counts(store, name).map_err(crate::status::store_error)?)
    } else {
        None
    };
    let marks = Marks {
        counts: counts.as_ref(),
        ..Marks::default()
    };
    let svg = graph::svg(&compiled, &marks);
    Ok(layout(
        name,
        caller,
        None,
        html! {
            @if let Some(r) = &refused { (view::refusal(r)) }
            @if let Some(d) = &compiled.definition.description { p.description { (d) } }
            p {
                "Version " (short(&shown.version)) ", applied by " (shown.applied_by) " " (when(&shown.applied_at))
                " from " (provenance(shown.provenance.as_ref())) ". "
                a href=(format!("/instances?workflow={}", query_value(name))) { "Its instances" }
            }
            figure.graph { (view::svg(svg)) }
            @if let Some(c) = &counts {
                p.note { (c.values().sum::<u64>()) " instances; each state shows how many are in it (kept by apply, not counted by a scan)." }
                p.states {
                    @for (state, n) in c {
                        a.state href=(format!("/instances?workflow={}&state={}", query_value(name), query_value(state))) { (state) ": " (n) }
                        " "
                    }
                }
            }
            h2 { "Transitions" }
            (transitions_table(&compiled))
            @if !compiled.slas.is_empty() {
                h2 { "SLAs" }
                (slas_table(&compiled))
            }
            h2 { "Start an instance" }
            form.card method="post" action=(format!("/workflows/{}/instances", query_value(name))) {
                (csrf(caller))
                label { "Business key (optional)" input name="key"; }
                label { "Data (a JSON object)" textarea name="data" rows="6" { "{}" } }
                @if let Some(schema) = &compiled.definition.data {
                    details { summary { "Data schema" } (json_block(&schema.to_string())) }
                }
                button type="submit" { "Create" }
            }
            h2 { "Versions" }
            table {
                thead { tr { th { "Version" } th { "Applied by" } th { "Applied" } th { "Provenance" } } }
                tbody {
                    @for v in versions.iter().rev() {
                        tr.current[v.version == shown.version] {
                            td { a href=(format!("/workflows/{}?version={}", query_value(name), v.version)) { (short(&v.version)) } }
                            td { (v.applied_by) }
                            td { (when(&v.applied_at)) }
                            td { (provenance(v.provenance.as_ref())) }
                        }
                    }
                }
            }
        },
    ))
}

fn gate(g: &lockstep_core::validate::Gate) -> String {
    match g {
        lockstep_core::validate::Gate::AfterEntering(ms) => {
            format!("{} after entering", people(*ms))
        }
        lockstep_core::validate::Gate::Field { field, offset_ms } if *offset_ms == 0 => {
            format!("data.{field}")
        }
        lockstep_core::validate::Gate::Field { field, offset_ms } => {
            format!("data.{field} + {}", people(*offset_ms))
        }
    }
}

fn transitions_table(d: &CompiledDefinition) -> Markup {
    html! {
        table.transitions {
            thead { tr { th { "Transition" } th { "From → to" } th { "Allow" } th { "Guard" } th { "Gates" } th { "Effects" } } }
            tbody {
                @for t in d.transitions.values() {
                    tr {
                        td {
                            strong { (t.name) }
                            @if t.system { " " span.tag { "system" } }
                            @if let Some(e) = &t.on { " " span.tag { "on " (e) } }
                        }
                        td { (t.from.iter().cloned().collect::<Vec<_>>().join(", ")) " → " (t.to) }
                        td { @if let Some(a) = &t.allow { code { (a.source()) } } @else { span.muted { "anyone" } } }
                        td { @if let Some(g) = &t.guard { code { (g.source()) } } }
                        td {
                            @if let Some(g) = &t.not_before { "not before " (gate(g)) br; }
                            @if let Some(g) = &t.not_after { "not after " (gate(g)) }
                        }
                        td {
                            @for e in &t.effects {
                                @match e {
                                    lockstep_core::validate::EffectSpec::Task(task) => {
                                        "task " code { (task.task_type) } " on " code { (task.queue) }
                                        " (timeout " (people(task.timeout_ms)) ")" br;
                                    }
                                    lockstep_core::validate::EffectSpec::Emit(name) => {
                                        "emit " code { (name) } br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn slas_table(d: &CompiledDefinition) -> Markup {
    let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    html! {
        table {
            thead { tr { th { "SLA" } th { "Budget" } th { "Starts in" } th { "Stops in" } th { "Pauses in" } th { "Warns at" } th { "On breach" } } }
            tbody {
                @for s in d.slas.values() {
                    tr {
                        td { (s.name) }
                        td {
                            (people(s.budget_ms))
                            @if let Some(c) = &s.calendar {
                                " of calendar " code { (c) }
                                @if let Some(def) = d.definition.calendars.get(c) { " (" (def.timezone) ")" }
                            }
                        }
                        td { (list(&s.start)) }
                        td { (list(&s.stop)) }
                        td { (list(&s.pause)) }
                        td { (s.warn_at.iter().map(|p| format!("{p}%")).collect::<Vec<_>>().join(", ")) }
                        td { (s.on_breach.clone().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct CreateForm {
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    data: String,
}

async fn create(
    State(console): State<Console>,
    caller: Caller,
    Path(name): Path<String>,
    Form(form): Form<CreateForm>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let created = async {
        let data = form_json(&form.data, "the data")?;
        let request = caller.request(
            &console,
            "/lockstep.v1.Instances/Create",
            pb::CreateInstanceRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                workflow: name.clone(),
                key: form.key.trim().to_string(),
                data_json: data,
            },
        )?;
        Ok::<_, Refused>(Instances::create(&console.api, request).await?.into_inner())
    }
    .await;
    match created {
        Ok(change) => Redirect::to(&format!("/instances/{}", query_value(&change.instance_id)))
            .into_response(),
        Err(refused) => {
            let status = refused.status;
            let page = workflow_page(&console, &caller, &name, "", Some(refused)).await;
            respond_refused(&console, &caller, status, page)
        }
    }
}

/// A JSON field of a form, checked before it is sent (`{}` when empty).
fn form_json(text: &str, what: &str) -> Result<String, Refused> {
    let text = text.trim();
    if text.is_empty() {
        return Ok("{}".into());
    }
    if text.len() > FORM_JSON_BYTES_MAX {
        return Err(Refused::bad_request(format!(
            "{what} is {} bytes, more than {FORM_JSON_BYTES_MAX}",
            text.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text.to_string()),
        Ok(_) => Err(Refused::bad_request(format!(
            "{what} must be a JSON object, like {{\"amount\": 120}}"
        ))),
        Err(e) => Err(Refused::bad_request(format!(
            "{what} is not valid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// The inbox

#[derive(Deserialize, Default)]
struct InboxQuery {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    page_token: String,
}

async fn inbox(
    State(console): State<Console>,
    caller: Caller,
    Query(q): Query<InboxQuery>,
) -> Response {
    let page = async {
        let all = all_workflows(&console, &caller).await?;
        let actor = caller.actor().cloned();
        let policy = console.api.node.trust.policy.current();
        let readable: Vec<String> = all
            .iter()
            .map(|w| w.workflow.clone())
            .filter(|w| policy.may_read(actor.as_ref(), w))
            .collect();
        let chosen: Vec<String> = if q.workflow.is_empty() {
            readable.iter().take(INBOX_WORKFLOWS_MAX).cloned().collect()
        } else {
            vec![q.workflow.clone()]
        };
        let answer = if chosen.is_empty() {
            pb::InboxResponse::default()
        } else {
            let request = caller.request(
                &console,
                "/lockstep.v1.Instances/Inbox",
                pb::InboxRequest {
                    workflows: chosen.clone(),
                    page_size: 50,
                    page_token: q.page_token.clone(),
                    ..Default::default()
                },
            )?;
            Instances::inbox(&console.api, request).await?.into_inner()
        };
        let body = html! {
            p.note {
                "What you may do now, decided by the engine with you as the actor at cluster time "
                (when(&answer.at)) "."
                @if q.workflow.is_empty() && readable.len() > INBOX_WORKFLOWS_MAX {
                    " Showing the first " (INBOX_WORKFLOWS_MAX) " workflows; pick one for the rest."
                }
            }
            form.filters method="get" action="/inbox" {
                label { "Workflow "
                    select name="workflow" {
                        option value="" { "all you may read" }
                        @for w in &readable { option value=(w) selected[*w == q.workflow] { (w) } }
                    }
                }
                button type="submit" { "Show" }
            }
            @if answer.items.is_empty() {
                p.empty { "Nothing waits for you." }
            } @else {
                table.inbox {
                    thead { tr { th { "Instance" } th { "Workflow" } th { "State" } th { "Updated" } th { "You may" } } }
                    tbody {
                        @for item in &answer.items {
                            tr {
                                td { a href=(format!("/instances/{}", query_value(&item.instance_id))) {
                                    @if item.key.is_empty() { (short(&item.instance_id)) } @else { (item.key) }
                                } }
                                td { (item.workflow) }
                                td { span.state { (item.state) } }
                                td { (when(&item.updated_at)) }
                                td { (actions_list(&item.instance_id, &item.actions)) }
                            }
                        }
                    }
                }
            }
            @if answer.truncated {
                p.note { "The scan stopped after " (answer.scanned) " instances before the page was full." }
            }
            @if !answer.next_page_token.is_empty() {
                a.next href=(format!("/inbox?workflow={}&page_token={}", query_value(&q.workflow), query_value(&answer.next_page_token))) { "More →" }
            }
        };
        Ok(layout("Inbox", &caller, Some("/events".into()), body))
    }
    .await;
    respond(&console, &caller, page)
}

fn actions_list(instance: &str, actions: &[pb::Action]) -> Markup {
    html! {
        ul.actions {
            @for a in actions {
                li {
                    @if a.opens_at.is_empty() {
                        a.action href=(format!("/instances/{}#take-{}", query_value(instance), a.transition)) { (a.transition) }
                    } @else {
                        span.action.gated { (a.transition) } " opens " (when(&a.opens_at))
                    }
                    " → " (a.to)
                    @if a.depends_on_payload { " " span.tag title="its allow or guard reads the payload: only an attempt decides" { "depends on the payload" } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Instances

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    sla: String,
    #[serde(default)]
    updated_since: String,
    #[serde(default)]
    incidents: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    page_token: String,
}

async fn instances(
    State(console): State<Console>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Response {
    let page = async {
        let all = all_workflows(&console, &caller).await?;
        let workflow = if q.workflow.is_empty() {
            all.first().map(|w| w.workflow.clone()).unwrap_or_default()
        } else {
            q.workflow.clone()
        };
        let answer = if workflow.is_empty() {
            pb::ListInstancesResponse::default()
        } else if !q.key.trim().is_empty() {
            // A business key names at most one instance: read it by its key index.
            let request = caller.request(
                &console,
                "/lockstep.v1.Instances/Get",
                pb::GetInstanceRequest {
                    instance: Some(pb::InstanceRef {
                        target: Some(pb::instance_ref::Target::Key(pb::BusinessKey {
                            workflow: workflow.clone(),
                            key: q.key.trim().to_string(),
                        })),
                    }),
                    ..Default::default()
                },
            )?;
            match Instances::get(&console.api, request).await {
                Ok(found) => pb::ListInstancesResponse {
                    instances: found.into_inner().instance.into_iter().collect(),
                    total: Some(1),
                    ..Default::default()
                },
                Err(status) if status.code() == tonic::Code::NotFound => pb::ListInstancesResponse {
                    total: Some(0),
                    ..Default::default()
                },
                Err(status) => return Err(status.into()),
            }
        } else {
            let request = caller.request(
                &console,
                "/lockstep.v1.Instances/List",
                pb::ListInstancesRequest {
                    workflow: workflow.clone(),
                    state: q.state.clone(),
                    sla_status: q.sla.clone(),
                    updated_since: q.updated_since.clone(),
                    page_size: LIST_PAGE,
                    page_token: q.page_token.clone(),
                    open_incidents: q.incidents == "open",
                    ..Default::default()
                },
            )?;
            Instances::list(&console.api, request).await?.into_inner()
        };
        let states: Vec<String> = match console.api.latest_compiled(&workflow)? {
            Some(d) => d.states.keys().cloned().collect(),
            None => Vec::new(),
        };
        let next = format!(
            "/instances?workflow={}&state={}&sla={}&updated_since={}&incidents={}&page_token={}",
            query_value(&workflow),
            query_value(&q.state),
            query_value(&q.sla),
            query_value(&q.updated_since),
            query_value(&q.incidents),
            query_value(&answer.next_page_token)
        );
        let body = html! {
            form.filters method="get" action="/instances" {
                label { "Workflow "
                    select name="workflow" {
                        @for w in &all { option value=(w.workflow) selected[w.workflow == workflow] { (w.workflow) } }
                    }
                }
                label { "State "
                    select name="state" {
                        option value="" { "any" }
                        @for s in &states { option value=(s) selected[*s == q.state] { (s) } }
                    }
                }
                label { "SLA "
                    select name="sla" {
                        option value="" { "any" }
                        @for s in ["running", "paused", "stopped", "warned", "breached"] {
                            option value=(s) selected[s == q.sla] { (s) }
                        }
                    }
                }
                label { "Incidents "
                    select name="incidents" {
                        option value="" { "any" }
                        option value="open" selected[q.incidents == "open"] { "open" }
                    }
                }
                label { "Updated since " input name="updated_since" value=(q.updated_since) placeholder="2026-12-01T00:00:00Z"; }
                label { "Business key " input name="key" value=(q.key) placeholder="PO-1"; }
                button type="submit" { "Filter" }
            }
            table.instances {
                thead { tr { th { "Instance" } th { "Key" } th { "State" } th { "SLAs" } th { "Incidents" } th { "Updated" } } }
                tbody {
                    @for i in &answer.instances {
                        tr {
                            td { a href=(format!("/instances/{}", query_value(&i.id))) { (short(&i.id)) } }
                            td { (i.key) }
                            td { span.state { (i.state) } }
                            td { @for s in &i.slas { (sla_badge(s)) " " } }
                            td { (i.incidents.iter().filter(|x| x.resolved_at.is_empty()).count()) }
                            td { (when(&i.updated_at)) }
                        }
                    }
                }
            }
            @if let Some(total) = answer.total { p.count { (total) " match." } }
            @if answer.instances.is_empty() { p.empty { "No instance matches." } }
            @if !answer.next_page_token.is_empty() { a.next href=(next) { "Next page →" } }
        };
        Ok(layout("Instances", &caller, Some(format!("/events?workflow={}", query_value(&workflow))), body))
    }
    .await;
    respond(&console, &caller, page)
}

fn sla_badge(s: &pb::Sla) -> Markup {
    let class = if s.breached {
        "sla breached"
    } else if s.warned_percent > 0 {
        "sla warned"
    } else {
        "sla"
    };
    html! { span class=(class) title=(format!("{} {}", s.name, s.status)) { (s.name) ": " (sla_words(s)) } }
}

fn sla_words(s: &pb::Sla) -> String {
    if s.breached {
        format!("breached, {} over", people(s.remaining_ms.unsigned_abs()))
    } else if s.status == "running" {
        format!("{} left", people(s.remaining_ms.max(0) as u64))
    } else {
        s.status.clone()
    }
}

async fn instance(
    State(console): State<Console>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let page = instance_page(&console, &caller, &id, None).await;
    respond(&console, &caller, page)
}

async fn instance_page(
    console: &Console,
    caller: &Caller,
    id: &str,
    refused: Option<Refused>,
) -> Page {
    let request = caller.request(
        console,
        "/lockstep.v1.Instances/Get",
        pb::GetInstanceRequest {
            instance: by_id(id),
            ..Default::default()
        },
    )?;
    let instance = Instances::get(&console.api, request)
        .await?
        .into_inner()
        .instance
        .unwrap_or_default();
    let request = caller.request(
        console,
        "/lockstep.v1.Instances/History",
        pb::HistoryRequest {
            instance: by_id(id),
            limit: TIMELINE_MAX,
            ..Default::default()
        },
    )?;
    let history = Instances::history(&console.api, request)
        .await?
        .into_inner()
        .records;
    let request = caller.request(
        console,
        "/lockstep.v1.Instances/Actions",
        pb::ActionsRequest {
            instance: by_id(id),
            ..Default::default()
        },
    )?;
    let actions = Instances::actions(&console.api, request)
        .await?
        .into_inner();
    let definition = console
        .api
        .compiled(&instance.workflow, &instance.definition_version)?
        .ok_or_else(|| Refused::bad_request("the instance's definition version is not stored"))?;
    let request = caller.request(
        console,
        "/lockstep.v1.Definitions/ListVersions",
        pb::ListDefinitionVersionsRequest {
            workflow: instance.workflow.clone(),
            ..Default::default()
        },
    )?;
    let versions = Definitions::list_versions(&console.api, request)
        .await?
        .into_inner()
        .versions;
    let taken = history
        .iter()
        .filter(|r| !r.transition.is_empty())
        .map(|r| (r.transition.clone(), r.from.clone()))
        .collect();
    let marks = Marks {
        counts: None,
        current: Some(&instance.state),
        taken,
    };
    let svg = graph::svg(&definition, &marks);
    let title = if instance.key.is_empty() {
        format!("{} {}", instance.workflow, &instance.id)
    } else {
        format!("{} {}", instance.workflow, instance.key)
    };
    let body = html! {
        @if let Some(r) = &refused { (view::refusal(r)) }
        p {
            "In " span.state { (instance.state) } " since " (when(&instance.entered_at))
            ", version " (instance.version) " of definition "
            a href=(format!("/workflows/{}?version={}", query_value(&instance.workflow), instance.definition_version)) { (short(&instance.definition_version)) }
            ". Created by " (instance.created_by) " " (when(&instance.created_at)) "."
        }
        div.columns {
            figure.graph { (view::svg(svg)) }
            section {
                h2 { "You may" }
                @if actions.actions.is_empty() { p.empty { "Nothing you may take from this state, now or once a gate opens." } }
                @for a in &actions.actions {
                    (take_form(caller, &instance, &definition, a))
                }
                (attempt_form(caller, &instance, &definition, &actions.actions))
            }
        }
        @if !instance.slas.is_empty() {
            h2 { "SLAs" }
            @for s in &instance.slas { (sla_bar(s, &instance, &definition)) }
        }
        h2 { "Data" }
        (json_block(&instance.data_json))
        @if !instance.timers.is_empty() {
            h2 { "Armed timers" }
            table {
                thead { tr { th { "Timer" } th { "Kind" } th { "Due" } } }
                tbody {
                    @for t in &instance.timers {
                        tr { td { code { (t.id) } } td { (t.kind) " " (t.sla) (t.state) (t.task_id) } td { (when(&t.due_at)) } }
                    }
                }
            }
        }
        @if !instance.tasks.is_empty() {
            h2 { "Tasks" }
            table {
                thead { tr { th { "Task" } th { "Type" } th { "Queue" } th { "Status" } th { "Attempt" } th { "Worker" } th { "Last error" } } }
                tbody {
                    @for t in &instance.tasks {
                        tr { td { code { (t.id) } } td { (t.task_type) } td { (t.queue) } td { (t.status) } td { (t.attempt) } td { (t.worker) } td { (t.last_error) } }
                    }
                }
            }
        }
        @if !instance.incidents.is_empty() {
            h2 { "Incidents" }
            table {
                thead { tr { th { "Incident" } th { "Task" } th { "Reason" } th { "Opened" } th { "Resolved" } } }
                tbody {
                    @for i in &instance.incidents {
                        tr.open[i.resolved_at.is_empty()] {
                            td { code { (i.id) } } td { (i.task_id) } td { (i.reason) } td { (when(&i.opened_at)) }
                            td {
                                @if i.resolved_at.is_empty() {
                                    form.inline method="post" action=(format!("/instances/{}/resolve", query_value(&instance.id))) {
                                        (csrf(caller))
                                        input type="hidden" name="incident" value=(i.id);
                                        @if !i.task_id.is_empty() {
                                            button type="submit" name="retry" value="1" { "Retry the task" }
                                            " "
                                        }
                                        button type="submit" name="retry" value="0" { "Resolve" }
                                    }
                                } @else { (when(&i.resolved_at)) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Audit timeline" }
        (timeline(&history, &versions))
    };
    Ok(layout(
        &title,
        caller,
        Some(format!("/events?instance={}", query_value(id))),
        body,
    ))
}

/// The form that takes one transition (or says when its gate opens).
fn take_form(
    caller: &Caller,
    instance: &pb::Instance,
    d: &CompiledDefinition,
    a: &pb::Action,
) -> Markup {
    let schema = d
        .definition
        .transitions
        .get(&a.transition)
        .and_then(|t| t.payload.as_ref())
        .map(|s| s.to_string());
    html! {
        form.card.take id=(format!("take-{}", a.transition)) method="post" action=(format!("/instances/{}/transition", query_value(&instance.id))) {
            (csrf(caller))
            input type="hidden" name="transition" value=(a.transition);
            input type="hidden" name="expected_version" value=(instance.version);
            h3 { (a.transition) " → " (a.to) }
            @if a.depends_on_payload { p.note { "Whether you may depends on the payload: the engine decides when you submit." } }
            @if let Some(schema) = &schema {
                label { "Payload (JSON)" textarea name="payload" rows="4" { "{}" } }
                details { summary { "Payload schema" } (json_block(schema)) }
            } @else {
                input type="hidden" name="payload" value="{}";
            }
            @if a.opens_at.is_empty() {
                button type="submit" { (a.transition) }
            } @else {
                p { "Opens " (when(&a.opens_at)) "." }
                button type="submit" disabled { (a.transition) }
            }
        }
    }
}

/// A form to attempt a transition the engine did not offer: the refusal says precisely why
/// (not allowed from this state, forbidden by `allow`, a guard, a gate).
fn attempt_form(
    caller: &Caller,
    instance: &pb::Instance,
    d: &CompiledDefinition,
    offered: &[pb::Action],
) -> Markup {
    let others: Vec<&str> = d
        .transitions
        .values()
        .filter(|t| !offered.iter().any(|a| a.transition == t.name))
        .map(|t| t.name.as_str())
        .collect();
    if others.is_empty() {
        return html! {};
    }
    html! {
        details.attempt {
            summary { "Attempt another transition" }
            form.card id="attempt" method="post" action=(format!("/instances/{}/transition", query_value(&instance.id))) {
                (csrf(caller))
                p.note { "The engine refuses what it did not offer, and says why." }
                label { "Transition"
                    select name="transition" {
                        @for name in &others { option value=(name) { (name) } }
                    }
                }
                label { "Payload (JSON)" textarea name="payload" rows="3" { "{}" } }
                button type="submit" { "Attempt" }
            }
        }
    }
}

/// An SLA clock as a bar of consumed and remaining budget, with its warning marks and the
/// breach time in the clock's calendar time zone.
fn sla_bar(s: &pb::Sla, instance: &pb::Instance, d: &CompiledDefinition) -> Markup {
    let spec = d.slas.get(&s.name);
    let budget = spec.map(|x| x.budget_ms).unwrap_or(s.consumed_ms.max(1));
    let consumed = (s.consumed_ms as f64 / budget.max(1) as f64).min(1.0);
    let width = 600.0;
    let breach = instance
        .timers
        .iter()
        .find(|t| t.kind == "sla_breach" && t.sla == s.name)
        .map(|t| t.due_at.clone());
    let zone = spec
        .and_then(|x| x.calendar.as_ref())
        .and_then(|c| d.definition.calendars.get(c))
        .map(|c| c.timezone.clone());
    let local = match (&breach, &zone) {
        (Some(at), Some(tz)) => in_zone(at, tz),
        _ => None,
    };
    let fill = if s.breached {
        "#dc2626"
    } else if s.warned_percent > 0 {
        "#d97706"
    } else {
        "#2563eb"
    };
    let mut svg = format!(
        "<svg class=\"bar\" width=\"{width}\" height=\"22\" viewBox=\"0 0 {width} 22\" role=\"img\" aria-label=\"{} of budget consumed\"><rect x=\"0\" y=\"4\" width=\"{width}\" height=\"14\" fill=\"#e2e8f0\" rx=\"3\"/><rect x=\"0\" y=\"4\" width=\"{:.1}\" height=\"14\" fill=\"{fill}\" rx=\"3\"/>",
        (consumed * 100.0).round(),
        consumed * width
    );
    for p in spec.map(|x| x.warn_at.clone()).unwrap_or_default() {
        let x = width * f64::from(p) / 100.0;
        svg.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"0\" x2=\"{x:.1}\" y2=\"22\" stroke=\"#92400e\" stroke-width=\"2\"/>"
        ));
    }
    svg.push_str("</svg>");
    html! {
        div.sla-clock {
            div { strong { (s.name) } " — " (s.status) ", " (people(s.consumed_ms)) " of " (people(budget)) " used, " (sla_words(s))
                @if s.warned_percent > 0 { ", warned at " (s.warned_percent) "%" } }
            (view::svg(svg))
            @if let Some(at) = &breach {
                div.breach { "Breaches " (when(at))
                    @if let (Some(local), Some(tz)) = (&local, &zone) { " — " (local) " in " (tz) }
                }
            }
        }
    }
}

/// An RFC 3339 time in an IANA time zone, for people (`2026-12-08 09:00`).
fn in_zone(at: &str, tz: &str) -> Option<String> {
    let t: jiff::Timestamp = at.parse().ok()?;
    let zone = jiff::tz::TimeZone::get(tz).ok()?;
    let local = zone.to_datetime(t);
    let abbreviation = zone.to_offset_info(t).abbreviation().to_string();
    Some(format!(
        "{} {abbreviation}",
        local.strftime("%Y-%m-%d %H:%M")
    ))
}

/// The audit timeline; each record names the definition version that governed it and where
/// that version came from (`versions`: the workflow's applied versions).
fn timeline(records: &[pb::AuditRecord], versions: &[pb::Definition]) -> Markup {
    let origin = |version: &str| {
        versions
            .iter()
            .find(|d| d.version == version)
            .and_then(|d| d.provenance.clone())
    };
    html! {
        table.timeline {
            thead { tr { th { "#" } th { "When" } th { "What" } th { "Who" } th { "Predicates" } th { "Governed by" } th { "Hash" } } }
            tbody {
                @for r in records {
                    tr {
                        td { (r.global_seq) }
                        td { (when(&r.at)) }
                        td {
                            (r.kind)
                            @if !r.transition.is_empty() { " " strong { (r.transition) } }
                            @if !r.from.is_empty() || !r.to.is_empty() { " " (r.from) " → " (r.to) }
                            @if !r.note.is_empty() { br; span.muted { (r.note) } }
                        }
                        td {
                            (r.actor_id) " "
                            span.muted { "(" (r.actor_kind)
                                @if !r.actor_roles.is_empty() { "; " (r.actor_roles.join(", ")) }
                                @if !r.actor_authn.is_empty() { "; via " (r.actor_authn) }
                                ")" }
                        }
                        td {
                            @for p in &r.predicates {
                                code { (p.role) ": " (p.expression) } " → " (p.result) br;
                            }
                        }
                        td {
                            @if !r.definition_version.is_empty() {
                                a href=(format!("/workflows/{}?version={}", query_value(&r.workflow), r.definition_version)) { (short(&r.definition_version)) }
                                br;
                                (provenance(origin(&r.definition_version).as_ref()))
                            }
                        }
                        td { (short(&r.hash)) }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct TransitionForm {
    csrf: String,
    transition: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    expected_version: Option<u64>,
}

async fn transition(
    State(console): State<Console>,
    caller: Caller,
    Path(id): Path<String>,
    Form(form): Form<TransitionForm>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let taken = async {
        let payload = form_json(&form.payload, "the payload")?;
        let request = caller.request(
            &console,
            "/lockstep.v1.Instances/Transition",
            pb::TransitionRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                instance: by_id(&id),
                transition: form.transition.clone(),
                payload_json: payload,
                expected_version: form.expected_version,
            },
        )?;
        Ok::<_, Refused>(
            Instances::transition(&console.api, request)
                .await?
                .into_inner(),
        )
    }
    .await;
    match taken {
        Ok(_) => Redirect::to(&format!("/instances/{}", query_value(&id))).into_response(),
        Err(refused) => {
            let status = refused.status;
            let page = instance_page(&console, &caller, &id, Some(refused)).await;
            respond_refused(&console, &caller, status, page)
        }
    }
}

#[derive(Deserialize)]
struct ResolveForm {
    csrf: String,
    incident: String,
    #[serde(default)]
    retry: String,
}

/// An operator resolves an incident (Tasks/ResolveIncident: the cluster policy's
/// resolve_incidents), optionally retrying its task with a fresh attempt budget.
async fn resolve(
    State(console): State<Console>,
    caller: Caller,
    Path(id): Path<String>,
    Form(form): Form<ResolveForm>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let resolved = async {
        let request = caller.request(
            &console,
            "/lockstep.v1.Tasks/ResolveIncident",
            pb::ResolveIncidentRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                instance: by_id(&id),
                incident_id: form.incident.clone(),
                retry_task: form.retry == "1",
            },
        )?;
        Ok::<_, Refused>(
            Tasks::resolve_incident(&console.api, request)
                .await?
                .into_inner(),
        )
    }
    .await;
    match resolved {
        Ok(_) => Redirect::to(&format!("/instances/{}", query_value(&id))).into_response(),
        Err(refused) => {
            let status = refused.status;
            let page = instance_page(&console, &caller, &id, Some(refused)).await;
            respond_refused(&console, &caller, status, page)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Audit and cluster

#[derive(Deserialize, Default)]
struct AuditQuery {
    #[serde(default)]
    verify: String,
}

async fn audit(
    State(console): State<Console>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Response {
    let page = async {
        let verify = q.verify == "1";
        // The page is the Audit service's: it needs read_audit like Audit/Verify.
        caller.admit(&console, "/lockstep.v1.Audit/Verify")?;
        let request = caller.request(
            &console,
            "/lockstep.v1.Audit/SecurityLog",
            pb::SecurityLogRequest {
                after_seq: 0,
                limit: 1000,
            },
        )?;
        let log = Audit::security_log(&console.api, request).await?.into_inner();
        let recent: Vec<&pb::SecurityEvent> = log.events.iter().rev().take(SECURITY_EVENTS_SHOWN as usize).collect();
        let chains = ask_every_member(
            &console,
            || crate::cluster::ForwardRequest::CheckChain { verify },
            |reply| match reply {
                crate::cluster::ForwardReply::ChainChecked(c) => Some(c),
                _ => None,
            },
        )
        .await;
        let body = html! {
            h2 { "Every node's hash chain" }
            p.note {
                "Heads at the same sequence must have the same hash; a node behind shows an earlier head. "
                @if verify {
                    "Each node verified its own copy from the first record."
                } @else {
                    a href="/audit?verify=1" { "Verify every chain" } " (each node re-reads and re-hashes all its records)."
                }
            }
            table.chains {
                thead { tr { th { "Node" } th { "Verdict" } th { "Records" } th { "Head" } th { "Head hash" } } }
                tbody {
                    @for (member, check) in &chains {
                        @let id = member.id;
                        @match check {
                            Ok(c) => {
                                @let forked = chains.iter().any(|(_, o)| o.as_ref().is_ok_and(|o| o.head_seq == c.head_seq && o.head_hash != c.head_hash));
                                tr.open[c.broken.is_some() || forked] {
                                    td { (id) }
                                    td {
                                        @match (&c.broken, c.verified) {
                                            (Some((seq, why)), _) => { "BROKEN at #" (seq) ": " (why) }
                                            (None, true) => "verified",
                                            (None, false) => "head only",
                                        }
                                        @if forked { " — differs from a node at the same head" }
                                    }
                                    td { @if c.verified { (c.checked) } }
                                    td { "#" (c.head_seq) }
                                    td { (short(&c.head_hash)) }
                                }
                            }
                            Err(e) => tr { td { (id) } td colspan="4" { span.muted { "not answered: " (e) } } }
                        }
                    }
                }
            }
            h2 { "Security log (newest first, " (log.total) " in all)" }
            table {
                thead { tr { th { "#" } th { "When" } th { "Kind" } th { "Call" } th { "Actor" } th { "From" } th { "Code" } th { "Reason" } } }
                tbody {
                    @for e in &recent {
                        tr { td { (e.seq) } td { (when(&e.at)) } td { (e.kind) } td { code { (e.method) } } td { (e.actor) } td { (e.remote) } td { (e.code) } td { (e.reason) } }
                    }
                }
            }
        };
        Ok(layout("Audit", &caller, None, body))
    }
    .await;
    respond(&console, &caller, page)
}

// ---------------------------------------------------------------------------------------
// Webhook subscriptions

/// Every webhook subscription (Subscriptions/List: the policy's manage_subscriptions), its
/// lag, its last error or pause, with pause and resume buttons.
async fn subscriptions(State(console): State<Console>, caller: Caller) -> Response {
    let page = subscriptions_page(&console, &caller, None).await;
    respond(&console, &caller, page)
}

async fn subscriptions_page(
    console: &Console,
    caller: &Caller,
    refused: Option<Refused>,
) -> Result<Markup, Refused> {
    let request = caller.request(
        console,
        "/lockstep.v1.Subscriptions/List",
        pb::ListSubscriptionsRequest {},
    )?;
    let all = Subscriptions::list(&console.api, request)
        .await?
        .into_inner()
        .subscriptions;
    let body = html! {
        @if let Some(r) = &refused { (view::refusal(r)) }
        p.note {
            "The leader POSTs each record a subscription matches to its URL, signed, at least once and in order. "
            "A subscription whose target keeps failing is paused with its last error; resume it once the target is fixed, and delivery goes on from its cursor. "
            "Create them with " code { "lockstep subscriptions create" } "."
        }
        @if all.is_empty() {
            p { "No subscriptions." }
        } @else {
            table.subscriptions {
                thead { tr { th { "Name" } th { "State" } th { "Behind" } th { "URL" } th { "Filter" } th { "Last error or pause" } th {} } }
                tbody {
                    @for s in &all {
                        @let f = s.filter.clone().unwrap_or_default();
                        tr.open[s.paused || !s.last_error.is_empty()] {
                            td { (s.name) }
                            td { @if s.paused { strong.alarm { "paused" } } @else { "active" } }
                            td { (s.audit_head.saturating_sub(s.cursor)) " records" }
                            td { code { (s.url) } }
                            td {
                                @if f.workflows.is_empty() && f.kinds.is_empty() && f.events.is_empty() { "everything" }
                                @if !f.workflows.is_empty() { "workflows " (f.workflows.join(", ")) " " }
                                @if !f.kinds.is_empty() { "kinds " (f.kinds.join(", ")) " " }
                                @if !f.events.is_empty() { "events " (f.events.join(", ")) }
                            }
                            td {
                                @if s.paused { (s.paused_reason) " (" (s.paused_by) ", " (when(&s.paused_at)) ")" }
                                @else if !s.last_error.is_empty() { (s.last_error) }
                            }
                            td {
                                @let action = if s.paused { "resume" } else { "pause" };
                                form method="post" action=(format!("/subscriptions/{}/{action}", query_value(&s.name))) {
                                    (csrf(caller))
                                    button type="submit" { @if s.paused { "Resume" } @else { "Pause" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout("Subscriptions", caller, None, body))
}

#[derive(Deserialize)]
struct SubscriptionForm {
    csrf: String,
}

/// Pauses or resumes a subscription (Subscriptions/Pause, Resume).
async fn change_subscription(
    State(console): State<Console>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<SubscriptionForm>,
) -> Response {
    if let Err(r) = caller.check_csrf(&form.csrf) {
        return r.page(&caller, &console);
    }
    let changed = async {
        let request_id = uuid::Uuid::new_v4().to_string();
        match action.as_str() {
            "pause" => {
                let request = caller.request(
                    &console,
                    "/lockstep.v1.Subscriptions/Pause",
                    pb::PauseSubscriptionRequest {
                        request_id,
                        name: name.clone(),
                        reason: String::new(),
                    },
                )?;
                Subscriptions::pause(&console.api, request).await?;
            }
            _ => {
                let request = caller.request(
                    &console,
                    "/lockstep.v1.Subscriptions/Resume",
                    pb::ResumeSubscriptionRequest {
                        request_id,
                        name: name.clone(),
                    },
                )?;
                Subscriptions::resume(&console.api, request).await?;
            }
        }
        Ok::<_, Refused>(())
    }
    .await;
    match changed {
        Ok(()) => Redirect::to("/subscriptions").into_response(),
        Err(refused) => {
            let status = refused.status;
            let page = subscriptions_page(&console, &caller, Some(refused)).await;
            respond_refused(&console, &caller, status, page)
        }
    }
}

#[derive(Deserialize, Default)]
struct ClusterQuery {
    #[serde(default)]
    digests: String,
}

async fn cluster(
    State(console): State<Console>,
    caller: Caller,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let page = async {
        let with_digests = q.digests == "1";
        let request = caller.request(
            &console,
            "/lockstep.v1.Cluster/Status",
            pb::ClusterStatusRequest { include_digest: false },
        )?;
        let s = Cluster::status(&console.api, request).await?.into_inner();
        let views = ask_every_member(
            &console,
            || crate::cluster::ForwardRequest::Describe {
                digest: with_digests,
            },
            |reply| match reply {
                crate::cluster::ForwardReply::Described(v) => Some(v),
                _ => None,
            },
        )
        .await;
        let body = html! {
            dl.status {
                dt { "This node" } dd { (s.node_id) " (" (s.role) ")" }
                dt { "Leader" } dd { @if s.leader_id == 0 { "none (election under way)" } @else { (s.leader_id) " at " (s.leader_addr) } }
                dt { "Term" } dd { (s.term) }
                dt { "Log" } dd { "last index " (s.last_log_index) ", applied " (s.applied_index) ", snapshot at " (s.snapshot_index) }
                dt { "Cluster time" } dd { (when(&s.cluster_time)) }
                dt { "Space" } dd {
                    (bytes(s.store_bytes)) " stored, " (bytes(s.data_dir_free_bytes)) " free"
                    @if !s.space_alarm.is_empty() { " — " strong.alarm { (s.space_alarm) } }
                }
            }
            h2 { "Every member, as it sees itself" }
            p.note {
                "Asked over the nodes' own channel. A node behind shows a lower applied index; nodes at the same applied index must have the same digest. "
                @if with_digests { a href="/cluster" { "Hide digests" } } @else { a href="/cluster?digests=1" { "Compute digests" } " (reads each node's whole state)." }
            }
            table.members {
                thead { tr { th { "Node" } th { "Address" } th { "Voter" } th { "Role" } th { "Term" } th { "Last log" } th { "Applied" } @if with_digests { th { "Digest" } } th { "Health" } } }
                tbody {
                    @for (m, view) in &views {
                        @match view {
                            Ok(v) => {
                                @let forked = with_digests && views.iter().any(|(_, o)| o.as_ref().is_ok_and(|o| o.applied_index == v.applied_index && o.digest != v.digest));
                                tr.open[forked || v.space_alarm.is_some()] {
                                    td { (m.id) } td { (m.addr) } td { (if m.voter { "yes" } else { "learner" }) }
                                    td { (v.role) } td { (v.term) } td { (v.last_log_index) } td { (v.applied_index) }
                                    @if with_digests { td { (short(&v.digest)) @if forked { " differs" } } }
                                    td { @match &v.space_alarm { Some(a) => strong.alarm { (a) }, None => { "ok, " (bytes(v.free_bytes)) " free" } } }
                                }
                            }
                            Err(e) => tr {
                                td { (m.id) } td { (m.addr) } td { (if m.voter { "yes" } else { "learner" }) }
                                td colspan=(if with_digests { 6 } else { 5 }) { span.muted { "not answered: " (e) } }
                            }
                        }
                    }
                }
            }
        };
        Ok(layout("Cluster", &caller, None, body))
    }
    .await;
    respond(&console, &caller, page)
}

/// Longest a page waits for another node's answer.
const MEMBER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Asks every member, this node included, the node-to-node question `ask()` builds: this
/// node answers it as it answers its peers (`Node::serve_forwarded`), the others over the
/// nodes' own channel, within [`MEMBER_ANSWER_TIMEOUT`]; `unpack` takes the answer's
/// variant.
async fn ask_every_member<T>(
    console: &Console,
    ask: impl Fn() -> crate::cluster::ForwardRequest,
    unpack: impl Fn(crate::cluster::ForwardReply) -> Option<T>,
) -> Vec<(pb::Member, Result<T, String>)> {
    let node = &console.api.node;
    let (ask, unpack) = (&ask, &unpack);
    let asks = node
        .members()
        .into_iter()
        .map(|(id, addr, voter)| async move {
            let reply = if id == node.id {
                Ok(node.serve_forwarded(ask()).await)
            } else {
                tokio::time::timeout(MEMBER_ANSWER_TIMEOUT, node.forward(&addr, ask())).await
            };
            let answer = match reply {
                Ok(Ok(reply)) => {
                    let shown = format!("{reply:?}");
                    unpack(reply).ok_or_else(|| format!("unexpected answer {shown}"))
                }
                Ok(Err(e)) => Err(format!("{e} (an older build cannot answer)")),
                Err(_) => Err(format!(
                    "no answer within {}",
                    people(MEMBER_ANSWER_TIMEOUT.as_millis() as u64)
                )),
            };
            (pb::Member { id, addr, voter }, answer)
        });
    futures::future::join_all(asks).await
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_json_says_what_is_wrong() {
        assert_eq!(form_json("", "the data").unwrap(), "{}");
        assert!(
            form_json("[1]", "the data")
                .unwrap_err()
                .message
                .contains("JSON object")
        );
        let e = form_json("{\"a\":", "the payload").unwrap_err();
        assert!(e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn bytes_print_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn breach_times_show_in_the_calendar_zone() {
        assert_eq!(
            in_zone("2026-12-08T08:00:00Z", "Europe/Berlin").as_deref(),
            Some("2026-12-08 09:00 CET")
        );
    }
}
