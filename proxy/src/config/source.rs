//! Reading the configuration keys from `--config PATH`: a directory with one file per key
//! (how kubelet mounts a ConfigMap, with its `..data` symlink swap), a ConfigMap manifest, or
//! a flat YAML map.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde::Deserialize;
use serde_yaml::Value;

use super::ConfigError;

/// Reads the keys at `path`.
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let meta = fs::metadata(path).map_err(|e| source_error(path, e))?;
    let data = if meta.is_dir() {
        read_dir(path)?
    } else {
        let text = fs::read_to_string(path).map_err(|e| source_error(path, e))?;
        parse_yaml(&text).map_err(|e| ConfigError::Source(format!("{}: {e}", path.display())))?
    };
    if data.is_empty() {
        return Err(ConfigError::Source(format!(
            "{}: no configuration keys found",
            path.display()
        )));
    }
    Ok(data)
}

/// Reads the keys from the text of a config file: a ConfigMap manifest or a flat YAML map.
/// As [`read`] does for a file, except that no keys at all is not an error here.
pub fn parse_text(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    parse_yaml(text).map_err(ConfigError::Source)
}

/// A short content hash of the keys, used as the revision of file-based configs.
pub fn revision(data: &BTreeMap<String, String>) -> String {
    let mut bytes = Vec::new();
    for (k, v) in data {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    format!("{:016x}", crate::route::stable_hash(&bytes))
}

fn source_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError::Source(format!("cannot read {}: {e}", path.display()))
}

/// One file per key; dot-files (kubelet's `..data` and timestamped directories) are not keys.
fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut data = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| source_error(dir, e))? {
        let entry = entry.map_err(|e| source_error(dir, e))?;
        let name = entry.file_name();
        let Some(key) = name.to_str() else { continue };
        if key.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows kubelet's `key -> ..data/key` symlinks.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(e) => return Err(source_error(&path, e)),
        }
        let value = fs::read(&path).map_err(|e| source_error(&path, e))?;
        let value = String::from_utf8(value).map_err(|_| {
            ConfigError::Source(format!("{}: the value is not UTF-8 text", path.display()))
        })?;
        data.insert(key.to_owned(), value);
    }
    Ok(data)
}

/// A ConfigMap manifest (the first ConfigMap document of the file) or a flat map.
fn parse_yaml(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut flat = None;
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| format!("not valid YAML: {e}"))?;
        let Value::Mapping(map) = &value else {
            if value.is_null() {
                continue;
            }
            return Err("expected a map of keys to values".into());
        };
        match map.get("kind") {
            Some(Value::String(kind)) if kind == "ConfigMap" => {
                return match map.get("data") {
                    None | Some(Value::Null) => Ok(BTreeMap::new()),
                    Some(data) => to_strings(data),
                };
            }
            // Another resource in a multi-document manifest.
            Some(_) if map.contains_key("apiVersion") => continue,
            _ => {
                if flat.is_none() {
                    flat = Some(to_strings(&value)?);
                }
            }
        }
    }
    Ok(flat.unwrap_or_default())
}

fn to_strings(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Mapping(map) = value else {
        return Err("expected a map of keys to values".into());
    };
    map.iter()
        .map(|(k, v)| {
            let key = scalar(k).ok_or("a key is not a string")?;
            let value = match v {
                Value::Null => String::new(),
                v => scalar(v).ok_or_else(|| format!("key `{key}`: the value must be a string"))?,
            };
            Ok((key, value))
        })
        .collect()
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_map_with_scalars() {
        let data =
            parse_yaml("blue.upstream: a:1\ncanary-weight: 5\nrollback.enabled: true\n").unwrap();
        assert_eq!(data["canary-weight"], "5");
        assert_eq!(data["rollback.enabled"], "true");
    }

    #[test]
    fn configmap_manifest_among_other_documents() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: canary-proxy\ndata:\n  canary-weight: \"50\"\n";
        let data = parse_yaml(text).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data["canary-weight"], "50");
    }

    #[test]
    fn nested_values_and_garbage_are_rejected() {
        assert_eq!(
            parse_yaml("sticky: {a: b}\n").unwrap_err(),
            "key `sticky`: the value must be a string"
        );
        assert!(
            parse_yaml("a: [\n")
                .unwrap_err()
                .starts_with("not valid YAML")
        );
        assert_eq!(
            parse_yaml("- a\n").unwrap_err(),
            "expected a map of keys to values"
        );
    }

    #[test]
    fn kubelet_directory_layout() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("..2026_11_26_08_00_00.1");
        fs::create_dir(&data_dir).unwrap();
        fs::write(data_dir.join("canary-weight"), "5").unwrap();
        std::os::unix::fs::symlink("..2026_11_26_08_00_00.1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/canary-weight", dir.path().join("canary-weight"))
            .unwrap();
        let data = read(dir.path()).unwrap();
        assert_eq!(data.len(), 1);
        assert_eq!(data["canary-weight"], "5");
    }

    #[test]
    fn empty_sources_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read(dir.path())
                .unwrap_err()
                .to_string()
                .ends_with("no configuration keys found")
        );
        let file = dir.path().join("c.yaml");
        fs::write(&file, "").unwrap();
        assert!(
            read(&file)
                .unwrap_err()
                .to_string()
                .ends_with("no configuration keys found")
        );
        assert!(
            read(&dir.path().join("missing"))
                .unwrap_err()
                .to_string()
                .starts_with("cannot read")
        );
    }
}
