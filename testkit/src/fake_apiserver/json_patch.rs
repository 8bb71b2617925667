//! JSON Patch (RFC 6902), as `kubectl patch --type json` sends it: `add`, `remove`, `replace`
//! and `test`, on JSON Pointers (RFC 6901). `move` and `copy` are not implemented (400).

use serde_json::Value;

use super::status::ApiError;

/// Applies `ops` to `target` in order; on any failure `target` may be partly changed, so the
/// caller patches a copy.
pub(crate) fn apply(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| bad("a JSON patch must be a JSON array of operations".into()))?;
    for op in ops {
        let field = |name: &str| op.get(name).and_then(Value::as_str);
        let (Some(kind), Some(path)) = (field("op"), field("path")) else {
            return Err(bad(format!("an operation needs `op` and `path`: {op}")));
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("`{kind}` needs a value: {op}")))
        };
        match kind {
            "add" => add(target, path, value()?)?,
            "remove" => {
                remove(target, path)?;
            }
            "replace" => {
                remove(target, path)?;
                add(target, path, value()?)?;
            }
            "test" => {
                if target.pointer(path) != Some(&value()?) {
                    return Err(ApiError::invalid(format!(
                        "the server rejected our request due to an error in our request: \
                         testing value {path} failed"
                    )));
                }
            }
            other => return Err(bad(format!("unsupported JSON patch operation {other:?}"))),
        }
    }
    Ok(())
}

/// The parent container of `path` and the last reference token, unescaped.
fn parent<'v>(target: &'v mut Value, path: &str) -> Result<(&'v mut Value, String), ApiError> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| bad(format!("invalid JSON pointer {path:?}")))?;
    let container = target.pointer_mut(parent).ok_or_else(|| missing(path))?;
    Ok((container, last.replace("~1", "/").replace("~0", "~")))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let (container, token) = parent(target, path)?;
    match container {
        Value::Object(map) => {
            map.insert(token, value);
        }
        Value::Array(items) if token == "-" => items.push(value),
        Value::Array(items) => {
            let index = index(&token, items.len() + 1, path)?;
            items.insert(index, value);
        }
        _ => return Err(missing(path)),
    }
    Ok(())
}

fn remove(target: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (container, token) = parent(target, path)?;
    match container {
        Value::Object(map) => map.remove(&token).ok_or_else(|| missing(path)),
        Value::Array(items) => {
            let index = index(&token, items.len(), path)?;
            Ok(items.remove(index))
        }
        _ => Err(missing(path)),
    }
}

fn index(token: &str, len: usize, path: &str) -> Result<usize, ApiError> {
    token
        .parse::<usize>()
        .ok()
        .filter(|i| *i < len)
        .ok_or_else(|| missing(path))
}

fn missing(path: &str) -> ApiError {
    ApiError::invalid(format!(
        "the server rejected our request due to an error in our request: \
         doc is missing path: {path:?}"
    ))
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn follows_rfc6902() {
        let mut doc = json!({ "a": { "b/c": 1, "list": [1, 2] } });
        let ops = json!([
            { "op": "test", "path": "/a/b~1c", "value": 1 },
            { "op": "replace", "path": "/a/b~1c", "value": 2 },
            { "op": "add", "path": "/a/list/-", "value": 3 },
            { "op": "add", "path": "/a/list/0", "value": 0 },
            { "op": "remove", "path": "/a/list/1" },
            { "op": "add", "path": "/a/new", "value": { "x": true } },
        ]);
        apply(&mut doc, &ops).unwrap();
        assert_eq!(
            doc,
            json!({ "a": { "b/c": 2, "list": [0, 2, 3], "new": { "x": true } } })
        );
        let failed_test = json!([{ "op": "test", "path": "/a/b~1c", "value": 9 }]);
        assert_eq!(apply(&mut doc, &failed_test).unwrap_err().code, 422);
        let missing = json!([{ "op": "replace", "path": "/a/nothing/here", "value": 1 }]);
        assert_eq!(apply(&mut doc, &missing).unwrap_err().code, 422);
    }
}
