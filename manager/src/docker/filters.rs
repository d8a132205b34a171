//! The Engine API's `filters` query parameter: JSON of filter name → values, in either
//! of the shapes clients send (`{"name":{"web":true}}` since API 1.22, `{"name":["web"]}`
//! before). Unknown filter names are refused, as dockerd refuses them.

use std::collections::BTreeMap;

use super::error::ApiError;

/// Parsed filters: name → accepted values (any one must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses `raw` (the decoded query value), allowing only the names in `allowed`.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let Some(raw) = raw.filter(|r| !r.is_empty()) else { return Ok(Self::default()) };
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            ApiError::bad_request(format!("invalid filters {raw:?}: {e}: send JSON like {{\"name\":{{\"web\":true}}}}"))
        })?;
        let serde_json::Value::Object(map) = value else {
            return Err(ApiError::bad_request("invalid filters: expected a JSON object of filter name to values"));
        };
        let mut out = BTreeMap::new();
        for (name, values) in map {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "invalid filter '{name}': this endpoint filters by {}",
                    allowed.join(", ")
                )));
            }
            let list: Vec<String> = match values {
                serde_json::Value::Object(m) => {
                    m.into_iter().filter(|(_, on)| on.as_bool() == Some(true)).map(|(k, _)| k).collect()
                }
                serde_json::Value::Array(a) => a.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
                serde_json::Value::String(s) => vec![s],
                _ => return Err(ApiError::bad_request(format!("invalid filter '{name}': expected values"))),
            };
            out.insert(name, list);
        }
        Ok(Self(out))
    }

    /// Whether filter `name` passes: unset, or `test` holds for one of its values.
    pub fn accepts(&self, name: &str, test: impl Fn(&str) -> bool) -> bool {
        self.0.get(name).is_none_or(|values| values.is_empty() || values.iter().any(|v| test(v)))
    }

    /// Whether a `label` filter (`key` or `key=value`) passes for `labels`.
    pub fn accepts_labels<'a>(&self, name: &str, labels: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> bool {
        self.accepts(name, |f| {
            let (key, value) = match f.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (f, None),
            };
            labels.clone().any(|(k, v)| k == key && value.is_none_or(|want| want == v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_parse_and_unknown_names_are_refused() {
        let f = Filters::parse(Some(r#"{"name":{"web":true},"mode":["global"]}"#), &["name", "mode"]).unwrap();
        assert!(f.accepts("name", |v| v == "web"));
        assert!(!f.accepts("mode", |v| v == "replicated"));
        assert!(f.accepts("id", |_| false));
        let e = Filters::parse(Some(r#"{"colour":["red"]}"#), &["name"]).unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (400, "invalid filter 'colour': this endpoint filters by name"));
        assert_eq!(Filters::parse(Some("{"), &["name"]).unwrap_err().status, 400);
        let f = Filters::parse(Some(r#"{"label":["zone=eu"]}"#), &["label"]).unwrap();
        assert!(f.accepts_labels("label", [("zone", "eu")].into_iter()));
        assert!(!f.accepts_labels("label", [("zone", "us")].into_iter()));
    }
}
