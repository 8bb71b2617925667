//! Request routing: discovery documents, then `/api/v1` collections and objects.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::status::ApiError;
use super::store::{Key, Selector};
use super::watch::{WatchFilter, WatchRequest, error_line, watch_body};
use super::{
    RequestRecord, Shared, Verb, discovery, endpoint_slices, ingress, json_patch, leases,
    service_proxy,
};

/// Every response body: whole JSON documents, or a watch's event stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The resources this fake serves under `/api/v1`.
const RESOURCES: [&str; 2] = ["configmaps", "events"];

/// The resources it serves under `/apis`: group, version, plural name.
const GROUP_RESOURCES: [(&str, &str, &str); 3] = [
    ("networking.k8s.io", "v1", ingress::RESOURCE),
    ("discovery.k8s.io", "v1", endpoint_slices::RESOURCE),
    ("coordination.k8s.io", "v1", leases::RESOURCE),
];

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

/// Watches without `timeoutSeconds` end after this, as the real server's request timeout does.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// What the path names.
enum Target {
    /// A collection: list, watch or create.
    Collection {
        resource: String,
        namespace: Option<String>,
    },
    /// One object: get, update, patch or delete.
    Object(Key),
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or(""));
    if request.method() == Method::GET
        && let Some(document) = discovery::document(&path)
    {
        return Ok(json_response(StatusCode::OK, &document));
    }
    if request.method() == Method::GET
        && let Some(proxied) = service_proxy::parse(
            request
                .uri()
                .path_and_query()
                .map_or(path.as_str(), |p| p.as_str()),
        )
    {
        return Ok(match service_proxy::forward(&shared, &proxied).await {
            Ok((status, body)) => Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)).boxed_unsync())
                .expect("a valid response"),
            Err(error) => error_response(&error),
        });
    }
    let Some(target) = parse_target(&path) else {
        let error = ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
        return Ok(error_response(&error));
    };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (request.method().clone(), &target) {
        (Method::GET, Target::Collection { .. }) if watching => Verb::Watch,
        (Method::GET, Target::Collection { .. }) => Verb::List,
        (Method::POST, Target::Collection { .. }) => Verb::Create,
        (Method::GET, Target::Object(_)) => Verb::Get,
        (Method::PUT, Target::Object(_)) => Verb::Update,
        (Method::PATCH, Target::Object(_)) => Verb::Patch,
        (Method::DELETE, Target::Object(_)) => Verb::Delete,
        _ => {
            return Ok(error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                "method not allowed".into(),
            )));
        }
    };
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    shared.log(RequestRecord {
        verb,
        method: request.method().to_string(),
        path: path.clone(),
        query: request.uri().query().unwrap_or("").to_owned(),
        content_type: content_type.clone(),
    });
    if let Some(code) = shared.take_fault(verb) {
        let error = ApiError::injected(code);
        // A real server reports an expired watch inside a 200 stream, not as the HTTP status.
        if verb == Verb::Watch && code == 410 {
            return Ok(stream_response(
                Full::new(error_line(&error)).boxed_unsync(),
            ));
        }
        return Ok(error_response(&error));
    }
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return Ok(error_response(&error)),
    };
    let result = match target {
        Target::Collection {
            resource,
            namespace,
        } => match verb {
            Verb::Watch => return Ok(watch(&shared, resource, namespace, &query)),
            Verb::List => list(&shared, &resource, namespace.as_deref(), &query),
            _ => {
                parse_json(&body).and_then(|object| create(&shared, &resource, namespace, &object))
            }
        },
        Target::Object(key) => match verb {
            Verb::Get => shared.store().get(&key).map(|o| (StatusCode::OK, o)),
            Verb::Update => parse_json(&body)
                .and_then(|o| shared.store().update(&key, o))
                .map(|o| (StatusCode::OK, o)),
            Verb::Patch => patch(&shared, &key, content_type.as_deref(), &body),
            _ => shared.store().delete(&key).map(|o| (StatusCode::OK, o)),
        },
    };
    Ok(match result {
        Ok((status, object)) => json_response(status, &object),
        Err(error) => error_response(&error),
    })
}

fn list(
    shared: &Shared,
    resource: &str,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<(StatusCode, Value), ApiError> {
    let selector = selector(query)?;
    let store = shared.store();
    let items = store.list(resource, namespace, &selector);
    let (api_version, kind) = super::store::type_of(resource);
    let list = json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": { "resourceVersion": store.resource_version().to_string() },
        "items": items,
    });
    Ok((StatusCode::OK, list))
}

fn watch(
    shared: &Arc<Shared>,
    resource: String,
    namespace: Option<String>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let selector = match selector(query) {
        Ok(selector) => selector,
        Err(error) => return error_response(&error),
    };
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(rv) => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(&ApiError::bad_request(format!(
                    "invalid resourceVersion {rv:?}"
                )));
            }
        },
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let request = WatchRequest {
        filter: WatchFilter {
            resource,
            namespace,
            selector,
        },
        since,
        timeout,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|b| b == "true"),
    };
    stream_response(watch_body(shared, request))
}

/// The request's field and label selectors.
fn selector(query: &HashMap<String, String>) -> Result<Selector, ApiError> {
    let get = |name| query.get(name).map_or("", String::as_str);
    Selector::from_query(get("fieldSelector"), get("labelSelector"))
}

/// POST of `object` to a collection, through the admission rules the fake knows.
pub(crate) fn create(
    shared: &Shared,
    resource: &str,
    namespace: Option<String>,
    object: &Value,
) -> Result<(StatusCode, Value), ApiError> {
    let namespace = namespace
        .ok_or_else(|| ApiError::new(405, "MethodNotAllowed", "create needs a namespace".into()))?;
    if let Some(ns) = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        && ns != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the object does not match the namespace of the request".into(),
        ));
    }
    let mut store = shared.store();
    if resource == ingress::RESOURCE {
        let name = object.pointer("/metadata/name").and_then(Value::as_str);
        let key = Key {
            resource: resource.to_owned(),
            namespace: namespace.clone(),
            name: name.unwrap_or_default().to_owned(),
        };
        ingress::admit(&store, &key, object)?;
    }
    store
        .create(resource, &namespace, object.clone())
        .map(|o| (StatusCode::CREATED, o))
}

/// Merge patches, and strategic merge patches, which for the string maps of a ConfigMap and
/// the scalar fields of a Lease behave the same; JSON patches; server-side apply of a Lease
/// (as leader election uses it). Other server-side apply is not implemented: 415.
fn patch(
    shared: &Shared,
    key: &Key,
    content_type: Option<&str>,
    body: &Bytes,
) -> Result<(StatusCode, Value), ApiError> {
    match content_type {
        Some("application/merge-patch+json" | "application/strategic-merge-patch+json") => {
            let patch = parse_json(body)?;
            shared
                .store()
                .merge_patch(key, &patch)
                .map(|o| (StatusCode::OK, o))
        }
        Some("application/apply-patch+yaml") if key.resource == leases::RESOURCE => {
            // JSON is YAML; kube sends its apply patches as JSON.
            let patch = parse_json(body)?;
            shared
                .store()
                .patch_with(key, |object| leases::apply(key, object, &patch))
                .map(|o| (StatusCode::OK, o))
        }
        Some("application/json-patch+json") => {
            let ops = parse_json(body)?;
            shared
                .store()
                .patch_with(key, |object| json_patch::apply(object, &ops))
                .map(|o| (StatusCode::OK, o))
        }
        other => Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the fake API server does not support patch type {other:?}"),
        )),
    }
}

fn parse_target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let known = |r: &str| RESOURCES.contains(&r).then(|| r.to_owned());
    match parts.as_slice() {
        ["api", "v1", resource] => Some(Target::Collection {
            resource: known(resource)?,
            namespace: None,
        }),
        ["api", "v1", "namespaces", namespace, resource] => Some(Target::Collection {
            resource: known(resource)?,
            namespace: Some((*namespace).to_owned()),
        }),
        ["api", "v1", "namespaces", namespace, resource, name] => Some(Target::Object(Key {
            resource: known(resource)?,
            namespace: (*namespace).to_owned(),
            name: (*name).to_owned(),
        })),
        ["apis", group, version, rest @ ..] => {
            let served = |r: &str| {
                GROUP_RESOURCES
                    .iter()
                    .find(|(g, v, name)| g == group && v == version && *name == r)
                    .map(|(_, _, name)| (*name).to_owned())
            };
            match rest {
                [resource] => Some(Target::Collection {
                    resource: served(resource)?,
                    namespace: None,
                }),
                ["namespaces", namespace, resource] => Some(Target::Collection {
                    resource: served(resource)?,
                    namespace: Some((*namespace).to_owned()),
                }),
                ["namespaces", namespace, resource, name] => Some(Target::Object(Key {
                    resource: served(resource)?,
                    namespace: (*namespace).to_owned(),
                    name: (*name).to_owned(),
                })),
                _ => None,
            }
        }
        _ => None,
    }
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("reading the body: {e}"),
            )
        })
}

fn parse_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Decodes `a=b&c=d%3De` (form encoding, as clients write query strings).
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("JSON values serialize");
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("static response parts are valid")
}

fn stream_response(body: Body) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static response parts are valid")
}

fn error_response(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &error.to_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_strings() {
        let q = parse_query("fieldSelector=metadata.name%3Dcm&watch=true&x=a+b&bad=%zz&tail=%4");
        assert_eq!(q["fieldSelector"], "metadata.name=cm");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["tail"], "%4");
    }

    #[test]
    fn routes_paths() {
        assert!(matches!(
            parse_target("/api/v1/namespaces/ns/configmaps"),
            Some(Target::Collection {
                namespace: Some(_),
                ..
            })
        ));
        assert!(matches!(
            parse_target("/api/v1/configmaps"),
            Some(Target::Collection {
                namespace: None,
                ..
            })
        ));
        assert!(matches!(
            parse_target("/api/v1/namespaces/ns/events/e1"),
            Some(Target::Object(_))
        ));
        assert!(parse_target("/api/v1/namespaces/ns/secrets").is_none());
        assert!(parse_target("/apis/apps/v1/deployments").is_none());
        assert!(matches!(
            parse_target("/apis/networking.k8s.io/v1/namespaces/ns/ingresses/i"),
            Some(Target::Object(_))
        ));
        assert!(matches!(
            parse_target("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            Some(Target::Collection { .. })
        ));
        assert!(matches!(
            parse_target("/apis/coordination.k8s.io/v1/namespaces/ns/leases/judge"),
            Some(Target::Object(_))
        ));
        assert!(parse_target("/apis/coordination.k8s.io/v1/namespaces/ns/ingresses").is_none());
    }
}
