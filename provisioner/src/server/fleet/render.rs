//! Rendering a machine's `MachineConfig` from layers, Digital Rebar's order: the machine
//! first, then its profiles in the order it lists them, then the defaults. Mappings
//! merge key by key (the earlier layer wins a key both have); lists and plain values are
//! taken whole from the first layer that has them. Then parameters fill placeholders: a
//! string that is exactly `{{name}}` becomes the parameter's value (a number stays a
//! number), and `{{name}}` inside a longer string becomes its text. Parameters are looked
//! up in the same order. Last, every `{secretRef: NAME}` (in the config or in a
//! parameter) becomes the secret's text, or, for anyone but the node, `[secret NAME]`.

use serde_json::{Map, Value};

use crate::server::secrets::{redacted, Secrets};

/// Whether secrets are filled in (for the node's `GET /v1/config`) or shown redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// The secret's text: only for the node.
    Secrets,
    /// `[secret NAME]`: everywhere else.
    Redacted,
}

/// What went wrong, at which field (`config.files[0].contents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// The field's path.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Merges `layers` (most specific first) into one mapping.
pub fn merge(layers: &[&Map<String, Value>]) -> Map<String, Value> {
    let mut out = Map::new();
    for layer in layers.iter().rev() {
        merge_into(&mut out, layer);
    }
    out
}

/// Lays `top` over `base`: mappings key by key, anything else replaced.
fn merge_into(base: &mut Map<String, Value>, top: &Map<String, Value>) {
    for (k, v) in top {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(t)) if !is_secret_ref(v) => merge_into(b, t),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `{secretRef: NAME}` and nothing else.
fn is_secret_ref(v: &Value) -> bool {
    secret_name(v).is_some()
}

fn secret_name(v: &Value) -> Option<&str> {
    match v {
        Value::Object(o) if o.len() == 1 => o.get("secretRef").and_then(Value::as_str),
        _ => None,
    }
}

/// Every secret `v` names, with the field it is at (under `at`).
pub fn secret_refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    if let Some(n) = secret_name(v) {
        out.push((at.to_string(), n.to_string()));
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                secret_refs(x, &join(at, k), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                secret_refs(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// Fills placeholders and secrets in `v` (at field `at`), from `params`.
pub fn fill(
    v: &Value,
    at: &str,
    params: &Map<String, Value>,
    secrets: &Secrets,
    reveal: Reveal,
) -> Result<Value, RenderError> {
    if let Some(name) = secret_name(v) {
        return secret(name, at, secrets, reveal);
    }
    match v {
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                out.insert(k.clone(), fill(x, &join(at, k), params, secrets, reveal)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| fill(x, &format!("{at}[{i}]"), params, secrets, reveal))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::String(s) => fill_string(s, at, params, secrets, reveal),
        other => Ok(other.clone()),
    }
}

fn secret(name: &str, at: &str, secrets: &Secrets, reveal: Reveal) -> Result<Value, RenderError> {
    match reveal {
        Reveal::Redacted => {
            if !crate::server::secrets::valid_name(name) {
                return Err(RenderError {
                    field: at.to_string(),
                    reason: format!("secretRef {name:?} is not a secret's name"),
                });
            }
            Ok(Value::String(redacted(name)))
        }
        Reveal::Secrets => secrets
            .get(name)
            .map(Value::String)
            .map_err(|e| RenderError {
                field: at.to_string(),
                reason: e.to_string(),
            }),
    }
}

fn param<'a>(
    name: &str,
    at: &str,
    params: &'a Map<String, Value>,
) -> Result<&'a Value, RenderError> {
    params.get(name).ok_or_else(|| RenderError {
        field: at.to_string(),
        reason: format!(
            "{{{{{name}}}}}: no parameter {name:?} in the machine, its profiles or the defaults"
        ),
    })
}

fn fill_string(
    s: &str,
    at: &str,
    params: &Map<String, Value>,
    secrets: &Secrets,
    reveal: Reveal,
) -> Result<Value, RenderError> {
    let trimmed = s.trim();
    if let Some(name) = trimmed
        .strip_prefix("{{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .filter(|n| !n.contains("{{") && !n.contains("}}"))
    {
        // The whole value: the parameter as it is (a parameter holds no placeholders).
        let p = param(name, at, params)?;
        return match secret_name(p) {
            Some(n) => secret(n, at, secrets, reveal),
            None => Ok(p.clone()),
        };
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(RenderError {
                field: at.to_string(),
                reason: format!("{s:?}: a `{{{{` without its `}}}}`"),
            });
        };
        let name = after[..close].trim();
        let p = param(name, at, params)?;
        let text = match (secret_name(p), p) {
            (Some(n), _) => match secret(n, at, secrets, reveal)? {
                Value::String(t) => t,
                other => other.to_string(),
            },
            (None, Value::String(t)) => t.clone(),
            (None, Value::Number(n)) => n.to_string(),
            (None, Value::Bool(b)) => b.to_string(),
            (None, _) => {
                return Err(RenderError {
                    field: at.to_string(),
                    reason: format!(
                        "{{{{{name}}}}} inside a string must be text, a number or a boolean"
                    ),
                })
            }
        };
        out.push_str(&text);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(o) => o,
            _ => unreachable!("an object literal"),
        }
    }

    #[test]
    fn layers_merge_machine_first_and_params_fill_in() {
        let machine = obj(json!({"hostname": "{{name}}", "sysctls": {"a": "1"}}));
        let profile = obj(
            json!({"hostname": "p", "sysctls": {"a": "2", "b": "v{{b}}"},
                                  "users": [{"name": "x", "uid": "{{uid}}"}]}),
        );
        let defaults = obj(json!({"ntp": ["10.0.0.1"], "users": []}));
        let merged = merge(&[&machine, &profile, &defaults]);
        assert_eq!(
            Value::Object(merged.clone()),
            json!({"hostname": "{{name}}", "sysctls": {"a": "1", "b": "v{{b}}"},
                   "users": [{"name": "x", "uid": "{{uid}}"}], "ntp": ["10.0.0.1"]})
        );
        let params = obj(json!({"name": "node-7", "b": 3, "uid": 1500}));
        let secrets = Secrets::new(std::path::Path::new("/nonexistent"));
        let out = fill(
            &Value::Object(merged),
            "config",
            &params,
            &secrets,
            Reveal::Secrets,
        )
        .expect("fill");
        assert_eq!(out["hostname"], "node-7");
        assert_eq!(out["sysctls"]["b"], "v3", "inside a string, the text");
        assert_eq!(
            out["users"][0]["uid"], 1500,
            "a whole placeholder keeps the type"
        );
        let e = fill(
            &json!({"x": "a {{nope}}"}),
            "config",
            &params,
            &secrets,
            Reveal::Secrets,
        )
        .expect_err("unknown param");
        assert_eq!(e.field, "config.x");
        assert!(e.reason.contains("nope"), "{}", e.reason);
    }

    #[test]
    fn secrets_are_redacted_unless_revealed() {
        let v = json!({"files": [{"path": "/a", "contents": {"secretRef": "reg"}}]});
        let secrets = Secrets::new(std::path::Path::new("/nonexistent"));
        let out = fill(&v, "config", &Map::new(), &secrets, Reveal::Redacted).expect("fill");
        assert_eq!(out["files"][0]["contents"], "[secret reg]");
        let e = fill(&v, "config", &Map::new(), &secrets, Reveal::Secrets).expect_err("missing");
        assert_eq!(e.field, "config.files[0].contents");
        let mut refs = Vec::new();
        secret_refs(&v, "config", &mut refs);
        assert_eq!(
            refs,
            [("config.files[0].contents".to_string(), "reg".to_string())]
        );
    }
}
