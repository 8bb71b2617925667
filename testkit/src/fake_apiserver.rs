//! A fake Kubernetes API server for tests: the real wire protocol over plain HTTP on loopback.
//!
//! It serves core/v1 `configmaps` and `events`, networking.k8s.io/v1 `ingresses` (with
//! ingress-nginx's one-Ingress-per-host-and-path admission rule), discovery.k8s.io/v1
//! `endpointslices` (selected by label) and coordination.k8s.io/v1 `leases` (with the
//! server-side apply conflict leader election needs): list (with the collection's resourceVersion),
//! get, create (POST), update (PUT), merge and strategic-merge PATCH with `resourceVersion`
//! preconditions (409 Conflict), JSON PATCH, delete, and `watch=true` streams of ADDED / MODIFIED /
//! DELETED / BOOKMARK events resumable from a resourceVersion, with 410 Gone once that version
//! is compacted away. Discovery documents make `kubectl` work against it. Objects live in
//! memory and survive [`FakeApiServer::stop`] / [`FakeApiServer::restart`], like etcd behind
//! an API server that goes away and comes back on the same address.
//! [`FakeApiServer::start_tls`] serves the same over HTTPS with a self-signed certificate that
//! the kubeconfig trusts, as a real cluster's API server is reached.
//!
//! ```no_run
//! # async fn demo() {
//! use canary_testkit::fake_apiserver::FakeApiServer;
//! let api = FakeApiServer::start().await;
//! api.create_configmap("default", "canary", &[("canary-weight", "5")]);
//! // point a client at it: KUBECONFIG=api.kubeconfig_path()
//! api.patch_data("default", "canary", &[("canary-weight", "50")]);
//! # }
//! ```

mod discovery;
mod endpoint_slices;
mod ingress;
mod json_patch;
mod leases;
mod routes;
mod serve;
mod service_proxy;
mod status;
mod store;
mod watch;

pub use endpoint_slices::Pod;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use serve::{bind, kubeconfig, serve, tls_acceptor};
use store::{Key, Store};

use crate::upstream::TestUpstream;

/// Requests kept in the log that [`FakeApiServer::requests`] returns.
const REQUEST_LOG_LIMIT: usize = 10_000;

/// The kind of API request, for fault injection and the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// GET of one object.
    Get,
    /// POST to a collection.
    Create,
    /// PUT of one object.
    Update,
    /// PATCH of one object.
    Patch,
    /// DELETE of one object.
    Delete,
    /// Any of the above (only for [`FakeApiServer::fail_next`]); discovery is never failed.
    Any,
}

/// One API request as received (discovery requests are not logged).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// What kind of request it was.
    pub verb: Verb,
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// `Content-Type` without parameters, if sent.
    pub content_type: Option<String>,
}

/// A ConfigMap as stored, reduced to what tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapSnapshot {
    /// `data`.
    pub data: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// `metadata.uid`.
    pub uid: String,
}

/// A core/v1 Event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Namespace of the Event.
    pub namespace: String,
    /// `reason`, e.g. `CanaryRolledBack`.
    pub reason: String,
    /// `message`.
    pub message: String,
    /// `type`: `Normal` or `Warning`.
    pub type_: String,
    /// `involvedObject.kind`.
    pub involved_kind: String,
    /// `involvedObject.name`.
    pub involved_name: String,
    /// `involvedObject.uid`, empty if not set.
    pub involved_uid: String,
    /// `count`: how many times it happened (raised when a duplicate is merged into it).
    pub count: i64,
}

/// An injected failure: the next `remaining` requests of `verb` get `code`.
struct Fault {
    verb: Verb,
    code: u16,
    remaining: u32,
}

/// State shared by the handle and the connection tasks; it outlives stops and restarts.
pub(crate) struct Shared {
    /// Objects and watch history.
    store: Mutex<Store>,
    /// Pending injected failures, applied in order.
    faults: Mutex<Vec<Fault>>,
    /// The API requests received, oldest first.
    requests: Mutex<Vec<RequestRecord>>,
    /// Watches currently streaming.
    watches: AtomicUsize,
    /// Period of BOOKMARK events on watches that allow them.
    bookmark_interval: Duration,
    /// The service proxy's backends, by `NS/NAME:PORT`.
    services: Mutex<service_proxy::Backends>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    fn service_backend(&self, service: &str) -> Option<SocketAddr> {
        lock(&self.services).get(service).copied()
    }

    fn log(&self, record: RequestRecord) {
        let mut requests = lock(&self.requests);
        if requests.len() >= REQUEST_LOG_LIMIT {
            requests.remove(0);
        }
        requests.push(record);
    }

    /// Consumes one injected failure matching `verb`, if any.
    fn take_fault(&self, verb: Verb) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|f| f.verb == verb || f.verb == Verb::Any)?;
        let code = faults[index].code;
        faults[index].remaining -= 1;
        if faults[index].remaining == 0 {
            faults.remove(index);
        }
        Some(code)
    }
}

/// A running fake API server; see the module docs.
pub struct FakeApiServer {
    /// Where it listens; kept across restarts.
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop while serving; its connections die with it.
    serving: Mutex<Option<JoinHandle<()>>>,
    /// TLS for an HTTPS server; kept so a restart serves the same certificate.
    tls: Option<TlsAcceptor>,
    /// Holds the kubeconfig and kubectl's cache; removed on drop.
    dir: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts a server on `127.0.0.1:0` (plain HTTP) and writes a kubeconfig for it.
    ///
    /// # Panics
    /// If the port cannot be bound or the temporary directory cannot be written.
    pub async fn start() -> Self {
        Self::launch(false)
    }

    /// A server holding ConfigMap `namespace/name` that points blue and green at two new test
    /// upstreams, with `keys` besides; the upstreams are returned to keep them serving.
    pub async fn with_colors(
        namespace: &str,
        name: &str,
        keys: &[(&str, &str)],
    ) -> (Self, (TestUpstream, TestUpstream)) {
        let (blue, green) = (
            TestUpstream::start("blue").await,
            TestUpstream::start("green").await,
        );
        let api = Self::start().await;
        let (b, g) = (blue.authority(), green.authority());
        let mut data = vec![
            ("blue.upstream", b.as_str()),
            ("green.upstream", g.as_str()),
        ];
        data.extend_from_slice(keys);
        api.create_configmap(namespace, name, &data);
        (api, (blue, green))
    }

    /// Like [`FakeApiServer::start`], over HTTPS: a fresh self-signed certificate for
    /// `127.0.0.1`, written to `ca.crt` beside the kubeconfig, which names it as the
    /// cluster's `certificate-authority`.
    ///
    /// # Panics
    /// As [`FakeApiServer::start`], or if the certificate cannot be made.
    pub async fn start_tls() -> Self {
        Self::launch(true)
    }

    fn launch(https: bool) -> Self {
        let listener =
            bind("127.0.0.1:0".parse().expect("valid address")).expect("bind the fake API server");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            faults: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
            watches: AtomicUsize::new(0),
            bookmark_interval: Duration::from_secs(1),
            services: Mutex::default(),
        });
        let dir = tempfile::tempdir().expect("temporary directory for the kubeconfig");
        let tls = https.then(|| tls_acceptor(&dir.path().join("ca.crt")));
        let scheme = if https { "https" } else { "http" };
        let authority = https.then(|| dir.path().join("ca.crt"));
        std::fs::write(
            dir.path().join("kubeconfig"),
            kubeconfig(scheme, addr, authority.as_deref()),
        )
        .expect("write the kubeconfig");
        let server = Self {
            addr,
            shared,
            serving: Mutex::new(None),
            tls,
            dir,
        };
        let task = tokio::spawn(serve(listener, server.shared.clone(), server.tls.clone()));
        *lock(&server.serving) = Some(task);
        server
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://` for [`FakeApiServer::start_tls`].
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server (namespace `default`, a dummy
    /// bearer token). Pass it as `KUBECONFIG`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A `kubectl` command aimed at this server, with its discovery cache in a private
    /// directory; add the arguments and run it.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("kubectl");
        command
            .env("KUBECONFIG", self.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"));
        command
    }

    /// Sends the service proxy's requests for Service `namespace/service`, port `port` (its
    /// name or number, as the request names it), to `backend`.
    pub fn set_service_backend(
        &self,
        namespace: &str,
        service: &str,
        port: &str,
        backend: SocketAddr,
    ) {
        lock(&self.shared.services).insert(service_proxy::key(namespace, service, port), backend);
    }

    /// Creates a ConfigMap with this data; returns its resourceVersion.
    ///
    /// # Panics
    /// If it already exists.
    pub fn create_configmap(&self, namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
        let object = json!({ "metadata": { "name": name }, "data": pairs(data) });
        let created = self.shared.store().create("configmaps", namespace, object);
        resource_version(
            &created.unwrap_or_else(|e| panic!("create {namespace}/{name}: {}", e.message)),
        )
    }

    /// The ConfigMap as stored, if it exists.
    pub fn configmap(&self, namespace: &str, name: &str) -> Option<ConfigMapSnapshot> {
        let object = self
            .shared
            .store()
            .get(&configmap_key(namespace, name))
            .ok()?;
        let strings = |pointer: &str| -> BTreeMap<String, String> {
            object
                .pointer(pointer)
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Some(ConfigMapSnapshot {
            data: strings("/data"),
            annotations: strings("/metadata/annotations"),
            resource_version: text("/metadata/resourceVersion"),
            uid: text("/metadata/uid"),
        })
    }

    /// Sets these `data` keys (a merge patch, as `kubectl patch --type merge` does), and
    /// returns the new resourceVersion (unchanged if nothing changed).
    ///
    /// # Panics
    /// If the ConfigMap does not exist.
    pub fn patch_data(&self, namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
        let patch = json!({ "data": pairs(data) });
        let patched = self
            .shared
            .store()
            .merge_patch(&configmap_key(namespace, name), &patch);
        resource_version(
            &patched.unwrap_or_else(|e| panic!("patch {namespace}/{name}: {}", e.message)),
        )
    }

    /// Removes these annotations (a merge patch setting them to null, as `kubectl annotate
    /// KEY-` does); returns the new resourceVersion.
    ///
    /// # Panics
    /// If the ConfigMap does not exist.
    pub fn remove_annotations(&self, namespace: &str, name: &str, keys: &[&str]) -> String {
        let nulls: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| ((*k).to_owned(), Value::Null))
            .collect();
        let patch = json!({ "metadata": { "annotations": nulls } });
        let patched = self
            .shared
            .store()
            .merge_patch(&configmap_key(namespace, name), &patch);
        resource_version(
            &patched.unwrap_or_else(|e| panic!("annotate {namespace}/{name}: {}", e.message)),
        )
    }

    /// Replaces the whole `data` map; returns the new resourceVersion.
    ///
    /// # Panics
    /// If the ConfigMap does not exist.
    pub fn set_data(&self, namespace: &str, name: &str, data: &[(&str, &str)]) -> String {
        let key = configmap_key(namespace, name);
        let mut store = self.shared.store();
        let mut object = store
            .get(&key)
            .unwrap_or_else(|e| panic!("set {namespace}/{name}: {}", e.message));
        object["data"] = pairs(data);
        let updated = store.update(&key, object);
        resource_version(
            &updated.unwrap_or_else(|e| panic!("set {namespace}/{name}: {}", e.message)),
        )
    }

    /// Creates an object of a served resource (`ingresses`, say) as a client would POST it,
    /// admission rules included; returns it as stored.
    ///
    /// # Panics
    /// If it is refused (it exists, or admission denies it).
    pub fn create_object(&self, resource: &str, namespace: &str, object: Value) -> Value {
        routes::create(&self.shared, resource, Some(namespace.to_owned()), &object)
            .unwrap_or_else(|e| panic!("create {resource} {namespace}: {}", e.message))
            .1
    }

    /// An object of a served resource as stored, if it exists.
    pub fn object(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.shared.store().get(&key).ok()
    }

    /// Runs the installed `kubectl` with `args` against this server, as a user would; its
    /// stdout, or `None` where no `kubectl` is installed.
    ///
    /// # Panics
    /// If kubectl fails or takes more than 60 s.
    pub async fn run_kubectl<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Option<String> {
        let run = self.kubectl().args(args).output();
        let output = match tokio::time::timeout(Duration::from_secs(60), run).await {
            Err(_) => panic!("kubectl did not finish within 60 s"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Ok(result) => result.expect("kubectl runs"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let arguments: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        assert!(
            output.status.success(),
            "kubectl {arguments:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(stdout)
    }

    /// Sets the endpoints of the Service `service` as the EndpointSlice controller would: one
    /// slice, created or replaced, listing `endpoints` (address and readiness) on the port
    /// named `port_name`.
    pub fn set_endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        endpoints: &[(SocketAddr, bool)],
    ) {
        let slice = endpoint_slices::slice(service, port_name, endpoints);
        self.put_slice(namespace, service, slice);
    }

    /// Like [`FakeApiServer::set_endpoints`], with each pod's state, terminating included.
    pub fn set_pods(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        pods: &[(SocketAddr, Pod)],
    ) {
        let slice = endpoint_slices::pod_slice(service, port_name, pods);
        self.put_slice(namespace, service, slice);
    }

    fn put_slice(&self, namespace: &str, service: &str, slice: Value) {
        let key = Key {
            resource: endpoint_slices::RESOURCE.into(),
            namespace: namespace.into(),
            name: format!("{service}-fake"),
        };
        let mut store = self.shared.store();
        let result = if store.get(&key).is_ok() {
            store.update(&key, slice)
        } else {
            store.create(endpoint_slices::RESOURCE, namespace, slice)
        };
        result.unwrap_or_else(|e| panic!("endpoints of {namespace}/{service}: {}", e.message));
    }

    /// The holder of the Lease `namespace/name`, if it exists and is held.
    pub fn lease_holder(&self, namespace: &str, name: &str) -> Option<String> {
        self.object(leases::RESOURCE, namespace, name)?
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// Deletes the ConfigMap; returns whether it existed.
    pub fn delete_configmap(&self, namespace: &str, name: &str) -> bool {
        self.shared
            .store()
            .delete(&configmap_key(namespace, name))
            .is_ok()
    }

    /// The Events created so far, in name order (client-go style names sort by time).
    pub fn events(&self) -> Vec<RecordedEvent> {
        let items = self
            .shared
            .store()
            .list("events", None, &store::Selector::default());
        let text = |event: &Value, pointer: &str| {
            event
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        items
            .iter()
            .map(|e| RecordedEvent {
                namespace: text(e, "/metadata/namespace"),
                reason: text(e, "/reason"),
                message: text(e, "/message"),
                type_: text(e, "/type"),
                involved_kind: text(e, "/involvedObject/kind"),
                involved_name: text(e, "/involvedObject/name"),
                involved_uid: text(e, "/involvedObject/uid"),
                count: e.pointer("/count").and_then(Value::as_i64).unwrap_or(0),
            })
            .collect()
    }

    /// Compacts the history as etcd does: every open watch receives an ERROR event with a
    /// 410 Gone Status and ends, and no version seen so far can be resumed from.
    pub fn expire_watches(&self) {
        self.shared.store().expire();
    }

    /// Makes the next `times` requests of `verb` fail with HTTP `code` and a matching Status.
    /// For [`Verb::Watch`] and 410, the error comes as a real server sends it: an ERROR event
    /// inside a 200 response.
    pub fn fail_next(&self, verb: Verb, code: u16, times: u32) {
        if times > 0 {
            lock(&self.shared.faults).push(Fault {
                verb,
                code,
                remaining: times,
            });
        }
    }

    /// The API requests received so far (discovery excluded), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// How many watch responses are streaming right now.
    pub fn active_watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().resource_version()
    }

    /// Whether the server is accepting connections.
    pub fn is_running(&self) -> bool {
        lock(&self.serving).is_some()
    }

    /// Stops serving: the port is closed and every open connection (watches included) is cut.
    /// The objects are kept for [`FakeApiServer::restart`].
    pub async fn stop(&self) {
        let task = lock(&self.serving).take();
        if let Some(task) = task {
            task.abort();
            // Cancelled on purpose; waiting makes sure the listener and connections are gone.
            let _ = task.await;
        }
    }

    /// Serves again on the same address after [`FakeApiServer::stop`]; a no-op if running.
    ///
    /// # Panics
    /// If the address cannot be bound again (something else took the port).
    pub async fn restart(&self) {
        let mut serving = lock(&self.serving);
        if serving.is_none() {
            let listener = bind(self.addr).unwrap_or_else(|e| panic!("rebind {}: {e}", self.addr));
            *serving = Some(tokio::spawn(serve(
                listener,
                self.shared.clone(),
                self.tls.clone(),
            )));
        }
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.serving).take() {
            task.abort();
        }
    }
}

fn configmap_key(namespace: &str, name: &str) -> Key {
    Key {
        resource: "configmaps".into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn pairs(data: &[(&str, &str)]) -> Value {
    Value::Object(
        data.iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

fn resource_version(object: &Value) -> String {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not hide the state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
