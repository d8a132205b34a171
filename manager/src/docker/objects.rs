//! `/secrets` and `/configs`: shoal's secrets and configs in Docker's shapes. Pure:
//! Docker's create request → shoal's [`ObjectSpec`], shoal's [`ObjectView`] → Docker's
//! `Secret` / `Config` (a config shows its data, base64, as dockerd does; a secret never).

use base64::Engine;
use serde_json::{json, Value};
use shoal_proto::secrets::{Kind, ObjectSpec, ObjectView};
use shoal_proto::time::rfc3339;
use shoal_proto::Label;

use super::error::ApiError;

/// The kind a path segment names: `secrets` or `configs`.
pub fn kind_of(segment: &str) -> Option<Kind> {
    match segment {
        "secrets" => Some(Kind::Secret),
        "configs" => Some(Kind::Config),
        _ => None,
    }
}

/// A secret or config in Docker's shape.
pub fn view(v: &ObjectView) -> Value {
    let labels: serde_json::Map<String, Value> =
        v.labels.iter().map(|l| (l.key.to_string(), json!(l.value.as_str()))).collect();
    let mut spec = json!({ "Name": v.name.as_str(), "Labels": labels });
    if let Some(data) = &v.data {
        spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(data.as_slice()));
    }
    json!({
        "ID": v.id.as_str(),
        "Version": { "Index": v.version },
        "CreatedAt": rfc3339(v.created_at_ms),
        "UpdatedAt": rfc3339(v.updated_at_ms),
        "Spec": spec,
    })
}

/// Docker's `SecretSpec` / `ConfigSpec` as shoal's: name, labels and data; a driver or
/// templating is refused by name.
pub fn spec(kind: Kind, body: &Value) -> Result<ObjectSpec, ApiError> {
    let Value::Object(req) = body else { return Err(ApiError::bad_request("expected a JSON object")) };
    let (mut name, mut data, mut labels) = (None, None, Vec::new());
    for (k, v) in req {
        match k.as_str() {
            "Name" => name = v.as_str().map(str::to_owned),
            "Data" => {
                let text = v.as_str().ok_or_else(|| ApiError::bad_request("Data: expected base64 text"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| ApiError::bad_request(format!("Data: not base64: {e}")))?;
                data = Some(bytes);
            }
            "Labels" => {
                for (key, value) in v.as_object().into_iter().flatten() {
                    let bad = |e: shoal_proto::TooLong| ApiError::bad_request(format!("Labels.{key}: {e}"));
                    let value = value
                        .as_str()
                        .ok_or_else(|| ApiError::bad_request(format!("Labels.{key}: expected a string")))?;
                    labels.push(Label {
                        key: shoal_proto::text(key).map_err(bad)?,
                        value: shoal_proto::text(value).map_err(bad)?,
                    });
                }
            }
            _ if v.is_null() || v == &json!({}) || v == &json!("") => {}
            "Driver" | "Templating" => {
                return Err(ApiError::bad_request(format!(
                    "{k} is not supported by shoal: secrets and configs are kept by the manager, without templating"
                )))
            }
            other => return Err(ApiError::bad_request(format!("{other} is not a field shoal knows: remove it"))),
        }
    }
    let name = name.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::bad_request("Name: a name is required"))?;
    let data = data.unwrap_or_default();
    let limit = shoal_proto::secrets::MAX_DATA;
    Ok(ObjectSpec {
        kind,
        name: shoal_proto::text(&name).map_err(|e| ApiError::bad_request(format!("Name: {e}")))?,
        labels: labels.try_into().map_err(|_| ApiError::bad_request("Labels: too many labels"))?,
        data: data.try_into().map_err(|_| ApiError::bad_request(format!("Data: larger than {} KiB", limit / 1024)))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_map_and_views_show_config_data_only() {
        let s = spec(Kind::Config, &json!({"Name": "conf", "Labels": {"a": "b"}, "Data": "aGVsbG8="})).unwrap();
        assert_eq!((s.name.as_str(), s.data.as_slice(), s.labels[0].key.as_str()), ("conf", &b"hello"[..], "a"));
        let e = spec(Kind::Secret, &json!({"Name": "s", "Driver": {"Name": "vault"}})).unwrap_err();
        assert!(e.message.starts_with("Driver is not supported by shoal"));
        assert_eq!(spec(Kind::Secret, &json!({"Data": "eA=="})).unwrap_err().message, "Name: a name is required");
        assert!(spec(Kind::Secret, &json!({"Name": "s", "Data": "%%%"}))
            .unwrap_err()
            .message
            .starts_with("Data: not base64"));
        let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; shoal_proto::secrets::MAX_DATA + 1]);
        assert!(spec(Kind::Secret, &json!({"Name": "s", "Data": big}))
            .unwrap_err()
            .message
            .starts_with("Data: larger"));
    }
}
