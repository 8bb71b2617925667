//! The fake API server's memory: objects as JSON, one resourceVersion counter shared by all
//! kinds (as etcd's revision is), and a bounded history of changes for watches to resume from.

use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::status::ApiError;

/// Changes kept for watches that resume from a resourceVersion; older ones answer 410 Gone.
const HISTORY_LIMIT: usize = 256;

/// Capacity of the live change feed; a watcher that falls this far behind is sent 410 Gone,
/// as a real API server drops a slow watcher.
const FEED_CAPACITY: usize = 1024;

/// Where an object lives: resource (plural, e.g. `configmaps`), namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    /// The plural resource name, as in the URL.
    pub resource: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

impl ChangeKind {
    /// The `type` field of a watch event.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "ADDED",
            ChangeKind::Modified => "MODIFIED",
            ChangeKind::Deleted => "DELETED",
        }
    }
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The resourceVersion the write produced.
    pub rv: u64,
    /// Added, modified or deleted.
    pub kind: ChangeKind,
    /// Which object.
    pub key: Key,
    /// The object after the write (before it, for a deletion, with the deletion's version).
    pub object: Value,
}

/// What the live feed carries to open watches.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    /// A write happened.
    Change(Change),
    /// History was compacted: open watches must end with 410 Gone.
    Expire,
}

/// A parsed `fieldSelector` and `labelSelector`: `path=value` and `path!=value` terms joined
/// by commas; a field path is dotted, a label key is taken whole (it may hold dots).
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector(Vec<(Vec<String>, bool, String)>);

impl Selector {
    /// Parses a field selector; an empty string selects everything.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        Self::default().with_terms(text, |path| path.split('.').map(str::to_owned).collect())
    }

    /// Both selectors of a list or watch request.
    pub fn from_query(fields: &str, labels: &str) -> Result<Self, ApiError> {
        Self::parse(fields)?.with_terms(labels, |key| {
            vec!["metadata".to_owned(), "labels".to_owned(), key.to_owned()]
        })
    }

    fn with_terms(
        mut self,
        text: &str,
        path: impl Fn(&str) -> Vec<String>,
    ) -> Result<Self, ApiError> {
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (key, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (p, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector term {term:?}"
                )));
            };
            self.0
                .push((path(key.trim()), equal, value.trim().to_owned()));
        }
        Ok(self)
    }

    /// Whether `object` satisfies every term; a missing field reads as the empty string.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let field = path.iter().try_fold(object, |v, part| v.get(part));
            let field = field.and_then(Value::as_str).unwrap_or("");
            (field == value) == *equal
        })
    }
}

/// All objects and their history.
pub(crate) struct Store {
    /// The last resourceVersion handed out.
    rv: u64,
    /// Source of object UIDs.
    uids: u64,
    /// The objects, as the API returns them.
    objects: BTreeMap<Key, Value>,
    /// The last writes, oldest first, for resuming watches.
    history: VecDeque<Change>,
    /// Watches from a resourceVersion below this get 410 Gone (history before it is lost).
    floor: u64,
    /// Live feed to open watches.
    feed: broadcast::Sender<Notice>,
}

impl Store {
    pub fn new() -> Self {
        Self {
            rv: 0,
            uids: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            feed: broadcast::channel(FEED_CAPACITY).0,
        }
    }

    /// The current resourceVersion (what a list reports).
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    /// Objects of a resource, in one namespace or all, that match the selector.
    pub fn list(&self, resource: &str, namespace: Option<&str>, selector: &Selector) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.resource == resource && namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(_, v)| selector.matches(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates an object; 409 AlreadyExists if the name is taken.
    pub fn create(
        &mut self,
        resource: &str,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid("metadata.name: Required value: name is required"))?
            .to_owned();
        let key = Key {
            resource: resource.to_owned(),
            namespace: namespace.to_owned(),
            name,
        };
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&key));
        }
        validate(&key, &object)?;
        self.uids += 1;
        let meta = metadata(&mut object);
        meta.insert("namespace".into(), json!(namespace));
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
        );
        meta.insert("creationTimestamp".into(), json!(rfc3339_now()));
        let (api_version, kind) = type_of(resource);
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        Ok(self.commit(key, object, ChangeKind::Added))
    }

    /// Replaces an object (PUT); a non-empty `metadata.resourceVersion` must be current.
    pub fn update(&mut self, key: &Key, mut object: Value) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        check_precondition(key, &current, &object)?;
        validate(key, &object)?;
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            if let Some(value) = current["metadata"].get(field) {
                metadata(&mut object).insert(field.into(), value.clone());
            }
        }
        object["apiVersion"] = current["apiVersion"].clone();
        object["kind"] = current["kind"].clone();
        Ok(self.write_if_changed(key, &current, object))
    }

    /// Applies a JSON merge patch (RFC 7386); a `metadata.resourceVersion` in it is a
    /// precondition, checked before anything else, as the real API server does.
    pub fn merge_patch(&mut self, key: &Key, patch: &Value) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        if !patch.is_object() {
            return Err(ApiError::bad_request(
                "a merge patch must be a JSON object".into(),
            ));
        }
        check_precondition(key, &current, patch)?;
        self.patch_with(key, |object| {
            merge(object, patch);
            Ok(())
        })
    }

    /// Changes an object with `change` (a JSON patch, say), keeping its identity fields; a
    /// failed change leaves it as it was.
    pub fn patch_with(
        &mut self,
        key: &Key,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        let mut object = current.clone();
        change(&mut object)?;
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            metadata(&mut object).insert(field.into(), current["metadata"][field].clone());
        }
        validate(key, &object)?;
        Ok(self.write_if_changed(key, &current, object))
    }

    /// Deletes an object; the DELETED event carries the deletion's resourceVersion.
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let object = self.get(key)?;
        self.objects.remove(key);
        self.rv += 1;
        let mut object = object;
        metadata(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.record(Change {
            rv: self.rv,
            kind: ChangeKind::Deleted,
            key: key.clone(),
            object: object.clone(),
        });
        Ok(object)
    }

    /// Starts a watch: the changes after `since` (or, without it, the current objects as
    /// ADDED), and a receiver for what comes next. `Err` means `since` is too old: 410 Gone.
    pub fn watch_from(
        &self,
        since: Option<u64>,
    ) -> Result<(Vec<Change>, broadcast::Receiver<Notice>), u64> {
        let receiver = self.feed.subscribe();
        let backlog = match since {
            Some(rv) if rv < self.floor => return Err(rv),
            Some(rv) => self.history.iter().filter(|c| c.rv > rv).cloned().collect(),
            None => self
                .objects
                .iter()
                .map(|(key, object)| Change {
                    rv: self.rv,
                    kind: ChangeKind::Added,
                    key: key.clone(),
                    object: object.clone(),
                })
                .collect(),
        };
        Ok((backlog, receiver))
    }

    /// Compacts all history, as etcd compaction does: open watches end with 410 Gone and
    /// resuming from any version seen so far fails, so clients must list again.
    pub fn expire(&mut self) {
        self.rv += 1;
        self.floor = self.rv;
        self.history.clear();
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(Notice::Expire);
    }

    fn write_if_changed(&mut self, key: &Key, current: &Value, mut object: Value) -> Value {
        let current_rv = current
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        metadata(&mut object).insert("resourceVersion".into(), current_rv);
        // Like the real server, a write that changes nothing keeps the version and emits no event.
        if object == *current {
            return object;
        }
        self.commit(key.clone(), object, ChangeKind::Modified)
    }

    fn commit(&mut self, key: Key, mut object: Value, kind: ChangeKind) -> Value {
        self.rv += 1;
        metadata(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(key.clone(), object.clone());
        self.record(Change {
            rv: self.rv,
            kind,
            key,
            object: object.clone(),
        });
        object
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(Notice::Change(change));
    }
}

fn check_precondition(key: &Key, current: &Value, incoming: &Value) -> Result<(), ApiError> {
    let wanted = incoming
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let have = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    match wanted {
        Some(rv) if !rv.is_empty() && Some(rv) != have => Err(ApiError::conflict(key)),
        _ => Ok(()),
    }
}

/// What the real API server rejects in the objects we store: non-string ConfigMap data.
fn validate(key: &Key, object: &Value) -> Result<(), ApiError> {
    if key.resource != "configmaps" {
        return Ok(());
    }
    match object.get("data") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(data)) => match data.iter().find(|(_, v)| !v.is_string()) {
            Some((k, v)) => Err(ApiError::invalid(format!(
                "data.{k}: Invalid value: {v}: must be a string"
            ))),
            None => Ok(()),
        },
        Some(other) => Err(ApiError::invalid(format!(
            "data: Invalid value: {other}: must be a map"
        ))),
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes, anything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The object's `metadata` map, created if absent.
fn metadata(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = json!({});
    }
    let meta = object
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .expect("object was just made a map");
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata was just made a map")
}

/// `apiVersion` and `kind` of the resources the fake serves.
pub(crate) fn type_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "events" => ("v1", "Event"),
        super::ingress::RESOURCE => (super::ingress::GROUP_VERSION, "Ingress"),
        super::endpoint_slices::RESOURCE => {
            (super::endpoint_slices::GROUP_VERSION, "EndpointSlice")
        }
        super::leases::RESOURCE => (super::leases::GROUP_VERSION, "Lease"),
        _ => ("v1", "ConfigMap"),
    }
}

/// Now as RFC 3339 UTC, seconds precision, as `metav1.Time` is written.
pub(crate) fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            resource: "configmaps".into(),
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut target, &json!({"a": "z", "c": {"f": null}, "h": [1]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "h": [1]}));
    }

    #[test]
    fn resource_version_preconditions_conflict() {
        let mut store = Store::new();
        let created = store
            .create(
                "configmaps",
                "ns",
                json!({"metadata": {"name": "cm"}, "data": {"k": "1"}}),
            )
            .unwrap();
        let rv = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let patched = store
            .merge_patch(
                &key("cm"),
                &json!({"metadata": {"resourceVersion": rv}, "data": {"k": "2"}}),
            )
            .unwrap();
        assert_eq!(patched["data"]["k"], "2");
        let stale = store.merge_patch(
            &key("cm"),
            &json!({"metadata": {"resourceVersion": rv}, "data": {"k": "3"}}),
        );
        assert_eq!(stale.unwrap_err().code, 409);
        let bad = store.merge_patch(&key("cm"), &json!({"data": {"k": 3}}));
        assert_eq!(bad.unwrap_err().code, 422);
    }

    #[test]
    fn no_op_patch_keeps_the_version_and_old_versions_expire() {
        let mut store = Store::new();
        store
            .create("configmaps", "ns", json!({"metadata": {"name": "cm"}}))
            .unwrap();
        let before = store.resource_version();
        store
            .merge_patch(&key("cm"), &json!({"metadata": {"labels": null}}))
            .unwrap();
        assert_eq!(store.resource_version(), before);
        assert!(store.watch_from(Some(0)).is_ok());
        store.expire();
        assert!(store.watch_from(Some(before)).is_err());
        assert!(store.watch_from(Some(store.resource_version())).is_ok());
    }

    #[test]
    fn selectors_match_dotted_fields() {
        let object = json!({"metadata": {"name": "cm"}, "involvedObject": {"kind": "ConfigMap"}});
        assert!(
            Selector::parse("metadata.name=cm")
                .unwrap()
                .matches(&object)
        );
        assert!(
            Selector::parse("metadata.name==cm,involvedObject.kind=ConfigMap")
                .unwrap()
                .matches(&object)
        );
        assert!(
            !Selector::parse("metadata.name!=cm")
                .unwrap()
                .matches(&object)
        );
        assert!(Selector::parse("nonsense").is_err());
        // A label key keeps its dots.
        let slice = json!({"metadata": {"labels": {"kubernetes.io/service-name": "peers"}}});
        let by_label = |l: &str| Selector::from_query("", l).unwrap().matches(&slice);
        assert!(by_label("kubernetes.io/service-name=peers"));
        assert!(!by_label("kubernetes.io/service-name=other"));
    }

    #[test]
    fn formats_rfc3339() {
        let now = rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }
}
