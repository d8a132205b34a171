//! The Engine API's routes: version prefix and negotiation, then one function per
//! endpoint, each turning Docker's request into shoal control requests (through a
//! [`Backend`]) and shoal's answers into Docker's JSON. No sockets here: the HTTP shell
//! (`server`) hands in method, path, query and body and writes out the [`Reply`].
//!
//! Served: `/_ping`, `/version`, `/info`, `/swarm`, `/nodes`, `/services`, `/tasks`,
//! `/networks`, `/secrets`, `/configs`, `/distribution` (logs stream, so the shell
//! serves them through [`super::logs`]). Docker endpoints shoal has no equivalent for answer 501
//! with what to use instead; paths Docker does not have either answer 404.

use serde_json::{json, Value};
use shoal_proto::dispatch::{ServiceReply, ServiceRequest, ServiceView, TaskView};
use shoal_proto::networks::{Network, NetworkReply, NetworkRequest};
use shoal_proto::{ControlReply, ControlRequest, NodeView, Role};

use super::backend::Backend;
use super::error::ApiError;
use super::filters::Filters;
use super::objects;
use super::render;
use super::spec;

/// Oldest API version served: what docker 1.12 spoke, far older than any client in use.
pub const MIN_VERSION: (u32, u32) = (1, 24);
/// Newest API version served: docker 28.2's.
pub const MAX_VERSION: (u32, u32) = (1, 50);

/// How long removing a network waits for the tasks of removed services to stop: their
/// stop grace period (10 s by default) and a margin.
const NETWORK_RM_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// An answer: a status and a JSON body (none for 204 and HEAD), or plain text for
/// `/_ping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: String,
    /// `text/plain` instead of JSON.
    pub text: bool,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Self {
        Self { status, body: v.to_string(), text: false }
    }

    fn ok(v: &Value) -> Self {
        Self::json(200, v)
    }

    fn empty(status: u16) -> Self {
        Self { status, body: String::new(), text: false }
    }
}

/// One request as the HTTP shell got it: path and query still percent-encoded.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path, e.g. `/v1.50/services/create`.
    pub path: &'a str,
    /// The query string without `?`.
    pub query: &'a str,
    /// The whole body (already bounded by the shell).
    pub body: &'a [u8],
}

/// `/v1.NN/rest` → the version and `/rest`; a path without a prefix speaks the newest.
pub fn split_version(path: &str) -> Result<((u32, u32), &str), ApiError> {
    let Some(rest) = path.strip_prefix("/v") else { return Ok((MAX_VERSION, path)) };
    let (v, rest) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let parsed = v.split_once('.').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
    let Some(version) = parsed else {
        // Not a version: a path of its own (404 later), as dockerd's router does.
        return Ok((MAX_VERSION, path));
    };
    let show = |(a, b): (u32, u32)| format!("{a}.{b}");
    if version > MAX_VERSION {
        return Err(ApiError::bad_request(format!(
            "client version {} is too new. Maximum supported API version is {}",
            show(version),
            show(MAX_VERSION)
        )));
    }
    if version < MIN_VERSION {
        return Err(ApiError::bad_request(format!(
            "client version {} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
            show(version),
            show(MIN_VERSION)
        )));
    }
    Ok((version, rest))
}

/// Decodes `%XX` and `+` in a query component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `name`, decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "True"))
}

/// Answers one request.
pub async fn handle<B: Backend>(backend: &B, req: Request<'_>) -> Result<Reply, ApiError> {
    let (_version, path) = split_version(req.path)?;
    let segments: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let q = |name: &str| query_param(req.query, name);
    let api = Api { b: backend };
    match (req.method, segs.as_slice()) {
        ("GET" | "HEAD", ["_ping"]) => Ok(Reply { status: 200, body: "OK".into(), text: true }),
        ("GET", ["version"]) => Ok(Reply::ok(&render::version())),
        ("GET", ["info"]) => api.info().await,
        ("GET", ["swarm"]) => api.swarm().await,
        ("POST", ["swarm", "init"]) => Err(ApiError::not_implemented(
            "a shoal cluster is made with `shoal manager init --advertise-addr ADDR`, not `docker swarm init`",
        )),
        ("POST", ["swarm", "join"]) => Err(ApiError::not_implemented(
            "boards join with `shoal-agent join --token TOKEN MANAGER`; print the token with `docker swarm join-token worker`",
        )),
        ("POST", ["swarm", "leave"]) => Err(ApiError::not_implemented(
            "the manager can't leave its own cluster: stop `shoal manager run`; remove a board with `docker node rm`",
        )),
        ("POST", ["swarm", "update"]) => {
            let flags = [q("rotateWorkerToken"), q("rotateManagerToken"), q("rotateManagerUnlockKey")].map(truthy);
            api.swarm_update(q("version"), flags, req.body).await
        }
        (_, ["swarm", ..]) => Err(ApiError::not_implemented(
            "shoal's manager is never locked: autolock and unlock keys do not apply",
        )),
        ("GET", ["nodes"]) => api.nodes(q("filters").as_deref()).await,
        ("GET", ["nodes", id]) => Ok(Reply::ok(&api.node(id).await?)),
        ("POST", ["nodes", id, "update"]) => api.node_update(id, q("version"), req.body).await,
        ("DELETE", ["nodes", id]) => api.node_rm(id, truthy(q("force"))).await,
        ("GET", ["services"]) => api.services(q("filters").as_deref()).await,
        ("POST", ["services", "create"]) => api.service_create(req.body).await,
        ("GET", ["services", id]) => Ok(Reply::ok(&render::service(&api.service_view(id).await?))),
        ("POST", ["services", id, "update"]) => {
            api.service_update(id, q("version"), q("rollback").as_deref() == Some("previous"), req.body).await
        }
        ("DELETE", ["services", id]) => api.service_rm(id).await,
        ("GET", ["tasks"]) => api.tasks(q("filters").as_deref()).await,
        ("GET", ["tasks", id]) => api.task(id).await,
        ("GET", ["networks"]) => api.networks(q("filters").as_deref()).await,
        ("GET", ["networks", id]) => api.network(id).await,
        ("POST", ["networks", "create"]) => api.network_create(req.body).await,
        ("DELETE", ["networks", id]) => api.network_rm(id).await,
        ("GET", ["distribution", rest @ .., "json"]) if !rest.is_empty() => api.distribution(&rest.join("/")).await,
        // Read-only views Portainer and `docker ps|images|volume ls|system df` call: what
        // the manager itself holds. Containers and volumes live on the boards.
        ("GET", ["containers", "json"]) => Ok(Reply::ok(&json!([]))),
        ("GET", ["images", "json"]) => {
            Ok(Reply::ok(&Value::Array(self_images(&api).await?.iter().map(render::image_summary).collect())))
        }
        ("GET", ["volumes"]) => Ok(Reply::ok(&json!({
            "Volumes": [],
            "Warnings": ["volumes live on the boards: list them with `shoal volume ls` on the manager"],
        }))),
        ("GET", ["system", "df"]) => Ok(Reply::ok(&render::system_df(&self_images(&api).await?))),
        (_, ["containers", ..]) | (_, ["exec", ..]) | (_, ["commit"]) => Err(ApiError::not_implemented(
            "shoal manages services: use docker service create (containers run only as tasks of services)",
        )),
        (_, ["images", ..]) | (_, ["build"]) => Err(ApiError::not_implemented(
            "images are kept by the manager: use `shoal image load ARCHIVE` or `shoal image pull REF`, and `shoal image ls`",
        )),
        (_, ["volumes", ..]) => {
            Err(ApiError::not_implemented("volumes live on the boards: use `shoal volume ls|rm` on the manager"))
        }
        ("GET", [kind]) if objects::kind_of(kind).is_some() => {
            api.objects(objects::kind_of(kind).expect("checked"), q("filters").as_deref()).await
        }
        ("POST", [kind, "create"]) if objects::kind_of(kind).is_some() => {
            api.object_create(objects::kind_of(kind).expect("checked"), req.body).await
        }
        ("GET", [kind, id]) if objects::kind_of(kind).is_some() => {
            api.object(objects::kind_of(kind).expect("checked"), id).await
        }
        ("DELETE", [kind, id]) if objects::kind_of(kind).is_some() => {
            api.object_rm(objects::kind_of(kind).expect("checked"), id).await
        }
        (_, ["secrets" | "configs", _, "update"]) => Err(ApiError::not_implemented(
            "a secret's or config's bytes change with `shoal secret|config update NAME FILE`, which rolls the services using it",
        )),
        (_, ["plugins", ..]) | (_, ["session"]) | (_, ["grpc"]) | (_, ["system", ..]) => Err(
            ApiError::not_implemented(format!("{} is not served by shoal's Docker API (see docs/docker-api.md)", path)),
        ),
        _ => Err(ApiError::not_found(format!(
            "page not found: {} {path} is not an Engine API endpoint shoal serves (see docs/docker-api.md)",
            req.method
        ))),
    }
}

struct Api<'a, B> {
    b: &'a B,
}

async fn self_images<B: Backend>(api: &Api<'_, B>) -> Result<Vec<shoal_proto::images::ImageView>, ApiError> {
    match api.call(ControlRequest::ImageList).await? {
        ControlReply::Images(i) => Ok(i.into_vec()),
        _ => Err(unexpected("image")),
    }
}

fn unexpected(what: &str) -> ApiError {
    ApiError::new(500, format!("the manager answered a {what} request with something else: report this bug"))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn version_param(v: Option<String>) -> Result<u64, ApiError> {
    let v = v.ok_or_else(|| {
        ApiError::bad_request("the version query parameter is required: read it from the object's Version.Index")
    })?;
    v.parse().map_err(|_| ApiError::bad_request(format!("invalid version {v:?}: expected a whole number")))
}

fn text<const N: usize>(what: &str, s: &str) -> Result<shoal_proto::Text<N>, ApiError> {
    shoal_proto::text(s).map_err(|e| ApiError::bad_request(format!("{what} {s:?}: {e}")))
}

impl<B: Backend> Api<'_, B> {
    async fn call(&self, req: ControlRequest) -> Result<ControlReply, ApiError> {
        self.b.call(req).await.map_err(ApiError::from)
    }

    async fn service_call(&self, req: ServiceRequest) -> Result<ServiceReply, ApiError> {
        match self.call(ControlRequest::Service(req)).await? {
            ControlReply::Service(r) => Ok(r),
            _ => Err(unexpected("service")),
        }
    }

    async fn node_list(&self) -> Result<Vec<NodeView>, ApiError> {
        match self.call(ControlRequest::NodeList).await? {
            ControlReply::Nodes(n) => Ok(n.into_vec()),
            _ => Err(unexpected("node")),
        }
    }

    async fn network_list(&self) -> Result<Vec<Network>, ApiError> {
        match self.call(ControlRequest::Network(NetworkRequest::List)).await? {
            ControlReply::Network(NetworkReply::Networks(n)) => Ok(n.into_vec()),
            _ => Err(unexpected("network")),
        }
    }

    async fn info(&self) -> Result<Reply, ApiError> {
        let nodes = self.node_list().await?;
        let services = match self.service_call(ServiceRequest::List).await? {
            ServiceReply::Services(s) => s.len(),
            _ => return Err(unexpected("service")),
        };
        let ca = match self.call(ControlRequest::Ca { rotate: false }).await? {
            ControlReply::Ca(c) => c,
            _ => return Err(unexpected("ca")),
        };
        let mut info = render::info(&nodes, services, &ca);
        // The images the manager holds, as `/images/json` lists them.
        info["Images"] = json!(self_images(self).await?.len());
        Ok(Reply::ok(&info))
    }

    async fn swarm(&self) -> Result<Reply, ApiError> {
        let ca = match self.call(ControlRequest::Ca { rotate: false }).await? {
            ControlReply::Ca(c) => c,
            _ => return Err(unexpected("ca")),
        };
        let (token, addr) = match self.call(ControlRequest::JoinToken { rotate: false }).await? {
            ControlReply::JoinToken { token, manager_addr } => (token.to_string(), manager_addr.to_string()),
            _ => return Err(unexpected("join token")),
        };
        let nodes = self.node_list().await?;
        Ok(Reply::ok(&render::swarm(&ca, &token, &addr, &nodes)))
    }

    /// `docker swarm join-token --rotate worker`: the CLI sends the spec it read back with
    /// `rotateWorkerToken=true`. Only that rotation is served; a spec that changes a
    /// setting is refused naming the field, and plain `docker swarm update` stays 501.
    async fn swarm_update(&self, version: Option<String>, rotate: [bool; 3], body: &[u8]) -> Result<Reply, ApiError> {
        let [worker, manager, unlock] = rotate;
        if manager {
            return Err(ApiError::bad_request(
                "shoal has a single manager, so there is no manager join token to rotate: rotate the worker token",
            ));
        }
        if unlock {
            return Err(ApiError::not_implemented(
                "shoal's manager is never locked: autolock and unlock keys do not apply",
            ));
        }
        let version = version_param(version)?;
        let ca = match self.call(ControlRequest::Ca { rotate: false }).await? {
            ControlReply::Ca(c) => c,
            _ => return Err(unexpected("ca")),
        };
        if !body.is_empty() {
            if let Some(field) = render::swarm_spec_change(&ca, &parse_body(body)?) {
                return Err(ApiError::bad_request(field));
            }
        }
        if !worker {
            return Err(ApiError::not_implemented(
                "cluster settings change with `shoal manager update`; rotate the join token with `docker swarm join-token --rotate worker`",
            ));
        }
        let current = render::swarm(&ca, "", "", &[]);
        if Some(version) != current.pointer("/Version/Index").and_then(Value::as_u64) {
            return Err(ApiError::new(
                409,
                format!("update out of sequence: the swarm's version is not {version}: read it again"),
            ));
        }
        match self.call(ControlRequest::JoinToken { rotate: true }).await? {
            ControlReply::JoinToken { .. } => Ok(Reply::empty(200)),
            _ => Err(unexpected("join token")),
        }
    }

    async fn nodes(&self, filters: Option<&str>) -> Result<Reply, ApiError> {
        let f = Filters::parse(filters, &["id", "name", "role", "membership", "label", "node.label"])?;
        let list: Vec<Value> = self
            .node_list()
            .await?
            .iter()
            .filter(|n| {
                let role = if n.role == Role::Manager { "manager" } else { "worker" };
                f.accepts("id", |v| n.id.as_str().starts_with(v))
                    && f.accepts("name", |v| n.description.hostname.as_str().starts_with(v))
                    && f.accepts("role", |v| v == role)
                    && f.accepts("membership", |v| v == "accepted")
                    && f.accepts_labels(
                        "label",
                        n.description.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())),
                    )
                    && f.accepts_labels("node.label", n.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
            })
            .map(render::node)
            .collect();
        Ok(Reply::ok(&Value::Array(list)))
    }

    async fn node_view(&self, id: &str) -> Result<NodeView, ApiError> {
        match self.call(ControlRequest::NodeInspect { node: text("node", id)? }).await? {
            ControlReply::Node(n) => Ok(*n),
            _ => Err(unexpected("node")),
        }
    }

    async fn node(&self, id: &str) -> Result<Value, ApiError> {
        Ok(render::node(&self.node_view(id).await?))
    }

    async fn node_update(&self, id: &str, version: Option<String>, body: &[u8]) -> Result<Reply, ApiError> {
        let version = version_param(version)?;
        let body = parse_body(body)?;
        let current = self.node_view(id).await?;
        if version != render::node_version(&current) {
            return Err(ApiError::new(
                409,
                format!(
                    "update out of sequence: node {} changed since it was read (version {version}, now {}): run the command again",
                    current.description.hostname,
                    render::node_version(&current)
                ),
            ));
        }
        let change = render::node_change(&current, &body)?;
        self.call(ControlRequest::NodeUpdate {
            node: text("node", current.id.as_str())?,
            availability: change.availability,
            label_add: change.label_add,
            label_rm: change.label_rm,
        })
        .await?;
        Ok(Reply::empty(200))
    }

    async fn node_rm(&self, id: &str, force: bool) -> Result<Reply, ApiError> {
        self.call(ControlRequest::NodeRemove { node: text("node", id)?, force }).await?;
        Ok(Reply::empty(200))
    }

    async fn service_list(&self) -> Result<Vec<ServiceView>, ApiError> {
        match self.service_call(ServiceRequest::List).await? {
            ServiceReply::Services(s) => Ok(s.into_vec()),
            _ => Err(unexpected("service")),
        }
    }

    async fn services(&self, filters: Option<&str>) -> Result<Reply, ApiError> {
        let f = Filters::parse(filters, &["id", "name", "label", "mode"])?;
        let list: Vec<Value> = self
            .service_list()
            .await?
            .iter()
            .filter(|v| {
                let s = &v.service;
                let mode = match s.spec.mode {
                    shoal_proto::services::ServiceMode::Global => "global",
                    _ => "replicated",
                };
                f.accepts("id", |x| s.id.as_str().starts_with(x))
                    && f.accepts("name", |x| s.spec.name.as_str().starts_with(x))
                    && f.accepts("mode", |x| x == mode)
                    && f.accepts_labels("label", s.spec.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
            })
            .map(render::service)
            .collect();
        Ok(Reply::ok(&Value::Array(list)))
    }

    async fn service_view(&self, id: &str) -> Result<ServiceView, ApiError> {
        match self.service_call(ServiceRequest::Inspect { service: text("service", id)? }).await? {
            ServiceReply::Service(v) => Ok(*v),
            _ => Err(unexpected("service")),
        }
    }

    /// Maps a Docker spec onto `base` and checks a pinned digest against the image the
    /// manager holds under that reference.
    async fn map(
        &self,
        base: &shoal_proto::ServiceSpec,
        base_json: &Value,
        body: &Value,
    ) -> Result<shoal_proto::ServiceSpec, ApiError> {
        let networks = self.network_list().await?;
        let lookup = |target: &str| {
            networks
                .iter()
                .find(|n| n.id.as_str() == target || n.spec.name.as_str() == target)
                .map(|n| n.spec.name.to_string())
        };
        let fresh = shoal_proto::ServiceSpec::new(base.name.clone(), base.image.clone());
        let mapped = spec::map_spec(base, base_json, &render::spec_json(&fresh), body, &lookup)?;
        if let Some(digest) = &mapped.pinned_digest {
            let held = self.image_digest(&mapped.spec.image).await?;
            if held.as_deref() != Some(digest.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "TaskTemplate.ContainerSpec.Image: {}@{digest} is not the image the manager holds as {}: \
                     load that image with `shoal image load`, or send the reference without a digest",
                    mapped.spec.image, mapped.spec.image
                )));
            }
        }
        Ok(mapped.spec)
    }

    async fn image_digest(&self, reference: &str) -> Result<Option<String>, ApiError> {
        let images = match self.call(ControlRequest::ImageList).await? {
            ControlReply::Images(i) => i.into_vec(),
            _ => return Err(unexpected("image")),
        };
        let want = shoal_proto::images::normalize_ref(reference);
        Ok(images
            .iter()
            .find(|i| i.reference.as_str() == reference || shoal_proto::images::normalize_ref(&i.reference) == want)
            .map(|i| i.digest.to_string()))
    }

    async fn service_create(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let body = parse_body(body)?;
        let name = body.get("Name").and_then(Value::as_str).unwrap_or("");
        let image = body.pointer("/TaskTemplate/ContainerSpec/Image").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(ApiError::bad_request("Name: a service needs a name: set Name (docker service create --name)"));
        }
        if image.is_empty() {
            return Err(ApiError::bad_request("TaskTemplate.ContainerSpec.Image: a service needs an image"));
        }
        let base = shoal_proto::ServiceSpec::new(text("Name", name)?, text("image", image)?);
        let base_json = render::spec_json(&base);
        let spec = self.map(&base, &base_json, &body).await?;
        match self.service_call(ServiceRequest::Create(Box::new(spec))).await? {
            ServiceReply::Created(id) => Ok(Reply::json(201, &json!({ "ID": id.as_str(), "Warnings": null }))),
            _ => Err(unexpected("service")),
        }
    }

    async fn service_update(
        &self,
        id: &str,
        version: Option<String>,
        rollback: bool,
        body: &[u8],
    ) -> Result<Reply, ApiError> {
        let version = version_param(version)?;
        let current = self.service_view(id).await?;
        let service = text("service", current.service.id.as_str())?;
        if rollback {
            if version != current.service.spec_version {
                return Err(stale(&current, version));
            }
            self.service_call(ServiceRequest::Rollback { service }).await?;
            return Ok(Reply::ok(&json!({ "Warnings": null })));
        }
        let body = parse_body(body)?;
        if let Some(name) = body.get("Name").and_then(Value::as_str) {
            if !name.is_empty() && name != current.service.spec.name.as_str() {
                return Err(ApiError::bad_request(format!(
                    "Name: renaming a service is not supported (from {} to {name}): create a new service",
                    current.service.spec.name
                )));
            }
        }
        let base_json = render::service(&current)["Spec"].clone();
        let spec = self.map(&current.service.spec, &base_json, &body).await?;
        self.service_call(ServiceRequest::Update { service, spec: Box::new(spec), version }).await?;
        Ok(Reply::ok(&json!({ "Warnings": null })))
    }

    async fn service_rm(&self, id: &str) -> Result<Reply, ApiError> {
        self.service_call(ServiceRequest::Remove { service: text("service", id)? }).await?;
        Ok(Reply::empty(200))
    }

    async fn task_list(&self) -> Result<Vec<TaskView>, ApiError> {
        match self.service_call(ServiceRequest::Ps { services: Default::default() }).await? {
            ServiceReply::Tasks(t) => Ok(t.into_vec()),
            _ => Err(unexpected("service")),
        }
    }

    async fn tasks(&self, filters: Option<&str>) -> Result<Reply, ApiError> {
        let f = Filters::parse(filters, &["id", "name", "service", "node", "desired-state", "label", "_up-to-date"])?;
        let tasks = self.task_list().await?;
        // A task carries its service's labels (`docker stack ps` filters by the stack's).
        let labels: std::collections::HashMap<String, Vec<(String, String)>> = if filters
            .is_some_and(|f| f.contains("label"))
        {
            self.service_list()
                .await?
                .iter()
                .map(|v| {
                    let l = v.service.spec.labels.iter().map(|l| (l.key.to_string(), l.value.to_string())).collect();
                    (v.service.id.to_string(), l)
                })
                .collect()
        } else {
            Default::default()
        };
        let no_labels = Vec::new();
        let list: Vec<Value> = tasks
            .iter()
            .filter(|t| {
                let task = &t.task;
                let node = t.node_id.as_ref().map(|n| n.as_str()).unwrap_or("");
                let hostname = t.node_hostname.as_ref().map(|h| h.as_str()).unwrap_or("");
                f.accepts("id", |x| task.id.as_str().starts_with(x))
                    && f.accepts("name", |x| render::task_name(t).starts_with(x))
                    && f.accepts("service", |x| task.service_id.as_str() == x || t.service_name.as_str() == x)
                    && f.accepts("node", |x| !node.is_empty() && (node == x || hostname == x))
                    && f.accepts("desired-state", |x| task.desired_state.as_str().eq_ignore_ascii_case(x))
                    && f.accepts_labels(
                        "label",
                        labels
                            .get(task.service_id.as_str())
                            .unwrap_or(&no_labels)
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_str())),
                    )
            })
            .map(render::task)
            .collect();
        Ok(Reply::ok(&Value::Array(list)))
    }

    async fn task(&self, id: &str) -> Result<Reply, ApiError> {
        let tasks = self.task_list().await?;
        let found: Vec<&TaskView> = tasks.iter().filter(|t| t.task.id.as_str().starts_with(id)).collect();
        match found.as_slice() {
            [one] => Ok(Reply::ok(&render::task(one))),
            [] => Err(ApiError::not_found(format!("no such task: {id}"))),
            _ => Err(ApiError::bad_request(format!(
                "task {id} is ambiguous ({} matches): give more of its ID",
                found.len()
            ))),
        }
    }

    async fn networks(&self, filters: Option<&str>) -> Result<Reply, ApiError> {
        let f = Filters::parse(filters, &["id", "name", "driver", "scope", "type", "label"])?;
        let list: Vec<Value> = self
            .network_list()
            .await?
            .iter()
            .filter(|n| {
                f.accepts("id", |x| n.id.as_str().starts_with(x))
                    && f.accepts("name", |x| n.spec.name.as_str().contains(x))
                    && f.accepts("driver", |x| x == n.spec.driver.as_str())
                    && f.accepts("scope", |x| x == "swarm")
                    && f.accepts("type", |x| x == "custom" || (x == "builtin" && n.ingress))
                    && f.accepts_labels("label", n.spec.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
            })
            .map(render::network)
            .collect();
        Ok(Reply::ok(&Value::Array(list)))
    }

    async fn network(&self, id: &str) -> Result<Reply, ApiError> {
        match self.call(ControlRequest::Network(NetworkRequest::Inspect { network: text("network", id)? })).await? {
            ControlReply::Network(NetworkReply::Network(i)) => Ok(Reply::ok(&crate::cli::network::inspect_json(&i))),
            _ => Err(unexpected("network")),
        }
    }

    async fn network_create(&self, body: &[u8]) -> Result<Reply, ApiError> {
        let body = parse_body(body)?;
        let spec = render::network_spec(&body)?;
        match self.call(ControlRequest::Network(NetworkRequest::Create(Box::new(spec)))).await? {
            ControlReply::Network(NetworkReply::Created(id)) => {
                Ok(Reply::json(201, &json!({ "Id": id.as_str(), "Warning": "" })))
            }
            _ => Err(unexpected("network")),
        }
    }

    /// As Swarm, a network no service uses any more goes even while its last tasks are
    /// still stopping (`docker stack rm` removes the services, then at once the
    /// networks): shoal refuses that until they stopped, so this waits for them.
    async fn network_rm(&self, id: &str) -> Result<Reply, ApiError> {
        let req = || -> Result<ControlRequest, ApiError> {
            Ok(ControlRequest::Network(NetworkRequest::Remove { network: text("network", id)? }))
        };
        let deadline = std::time::Instant::now() + NETWORK_RM_WAIT;
        loop {
            match self.b.call(req()?).await {
                Ok(_) => return Ok(Reply::empty(204)),
                Err(e) if e.kind == shoal_proto::ErrorKind::Conflict && std::time::Instant::now() < deadline => {
                    let networks = self.network_list().await?;
                    let Some(n) = networks.iter().find(|n| n.id.as_str() == id || n.spec.name.as_str() == id) else {
                        return Err(e.into());
                    };
                    let used =
                        self.service_list().await?.iter().any(|v| v.service.spec.networks.contains(&n.spec.name));
                    if used || n.ingress {
                        return Err(e.into());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn distribution(&self, name: &str) -> Result<Reply, ApiError> {
        let images = match self.call(ControlRequest::ImageList).await? {
            ControlReply::Images(i) => i.into_vec(),
            _ => return Err(unexpected("image")),
        };
        let want = shoal_proto::images::normalize_ref(name);
        let found = images
            .iter()
            .find(|i| i.reference.as_str() == name || shoal_proto::images::normalize_ref(&i.reference) == want)
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "image {name} is not loaded on the manager: load it with `shoal image load ARCHIVE` first"
                ))
            })?;
        Ok(Reply::ok(&render::distribution(found)))
    }
}

impl<B: Backend> Api<'_, B> {
    async fn object_call(
        &self,
        req: shoal_proto::secrets::ObjectRequest,
    ) -> Result<shoal_proto::secrets::ObjectReply, ApiError> {
        match self.call(ControlRequest::Object(req)).await? {
            ControlReply::Object(r) => Ok(r),
            _ => Err(unexpected("secret or config")),
        }
    }

    async fn objects(&self, kind: shoal_proto::secrets::Kind, filters: Option<&str>) -> Result<Reply, ApiError> {
        use shoal_proto::secrets::{ObjectReply, ObjectRequest};
        let f = Filters::parse(filters, &["id", "name", "names", "label"])?;
        let ObjectReply::Objects(list) = self.object_call(ObjectRequest::List(kind)).await? else {
            return Err(unexpected("secret or config"));
        };
        let out: Vec<Value> = list
            .iter()
            .filter(|o| {
                f.accepts("id", |x| o.id.as_str().starts_with(x))
                    && f.accepts("name", |x| o.name.as_str().starts_with(x))
                    && f.accepts("names", |x| o.name.as_str() == x)
                    && f.accepts_labels("label", o.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
            })
            .map(objects::view)
            .collect();
        Ok(Reply::ok(&Value::Array(out)))
    }

    async fn object(&self, kind: shoal_proto::secrets::Kind, id: &str) -> Result<Reply, ApiError> {
        use shoal_proto::secrets::{ObjectReply, ObjectRequest};
        match self.object_call(ObjectRequest::Inspect { kind, name: text("name", id)? }).await? {
            ObjectReply::Object(o) => Ok(Reply::ok(&objects::view(&o))),
            _ => Err(unexpected("secret or config")),
        }
    }

    async fn object_create(&self, kind: shoal_proto::secrets::Kind, body: &[u8]) -> Result<Reply, ApiError> {
        use shoal_proto::secrets::{ObjectReply, ObjectRequest};
        let spec = objects::spec(kind, &parse_body(body)?)?;
        match self.object_call(ObjectRequest::Create(Box::new(spec))).await? {
            ObjectReply::Created(id) => Ok(Reply::json(201, &json!({ "ID": id.as_str() }))),
            _ => Err(unexpected("secret or config")),
        }
    }

    async fn object_rm(&self, kind: shoal_proto::secrets::Kind, id: &str) -> Result<Reply, ApiError> {
        use shoal_proto::secrets::ObjectRequest;
        self.object_call(ObjectRequest::Remove { kind, name: text("name", id)? }).await?;
        Ok(Reply::empty(204))
    }
}

fn stale(current: &ServiceView, version: u64) -> ApiError {
    ApiError::new(
        409,
        format!(
            "update out of sequence: service {} changed since it was read (version {version}, now {}): run the command again",
            current.service.spec.name, current.service.spec_version
        ),
    )
}

#[cfg(test)]
mod tests;
