//! Firecracker's official API spec as a test oracle.
//!
//! The spec is Swagger 2.0: operations under `paths`, bodies described by
//! JSON Schema (draft 4) objects under `definitions`. This loads one
//! version, finds the operation a request targets, inlines the `$ref`s of
//! its body schema, and validates a body with the `jsonschema` crate.
//!
//! Swagger schemas allow properties they do not list, but Firecracker
//! deserialises with `deny_unknown_fields` and rejects them. So every object
//! schema with `properties` gets `additionalProperties: false` injected
//! (recursively, referenced definitions included), making a misspelt or
//! removed field fail here the way it would against the real VMM.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The spec versions banger is checked against: the tested release and the
/// newest one it must work with.
pub(crate) const VERSIONS: [&str; 2] = ["1.14.1", "1.16.1"];

/// Where the spec files are: `$BANGER_FC_SPECS_DIR`, else the unmodified
/// copies in this crate's `specs/` (see its README for their origin).
pub(crate) fn specs_dir() -> PathBuf {
    match std::env::var_os("BANGER_FC_SPECS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("specs"),
    }
}

/// The spec's "Pre-boot only." / "Post-boot only." on an operation. A
/// microVM loaded from a snapshot counts as booted: `PUT /snapshot/load` is
/// itself "Pre-boot only", and Firecracker's API server serves the post-boot
/// operations once it has loaded one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BootPhase {
    PreBoot,
    PostBoot,
}

pub(crate) struct Spec {
    pub version: &'static str,
    doc: Value,
}

impl Spec {
    /// Loads `firecracker-v<version>.yaml`; a missing spec fails the test
    /// with instructions rather than skipping it, because without it
    /// nothing here is checked.
    pub fn load(version: &'static str) -> Spec {
        let path = specs_dir().join(format!("firecracker-v{version}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the Firecracker {version} API spec at {}: {e}\n\
                 The Firecracker spec tests need the official Swagger files \
                 (src/firecracker/swagger/firecracker.yaml at tag v{version}). \
                 By default they are read from this crate's specs/ \
                 ({}); set BANGER_FC_SPECS_DIR to use another folder \
                 holding firecracker-v{version}.yaml.",
                path.display(),
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("specs")
                    .display(),
            )
        });
        let doc: Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
        assert_eq!(
            doc["info"]["version"].as_str(),
            Some(version),
            "{} is not the {version} spec",
            path.display()
        );
        Spec { version, doc }
    }

    /// The path template a concrete path falls under (`/drives/rootfs` is
    /// `/drives/{drive_id}`), preferring the one with the most literal
    /// segments when several fit.
    pub fn template(&self, path: &str) -> Option<&str> {
        let want: Vec<&str> = path.split('/').collect();
        let paths = self.doc["paths"].as_object()?;
        let mut best: Option<(&str, usize)> = None;
        for template in paths.keys() {
            let have: Vec<&str> = template.split('/').collect();
            if have.len() != want.len() {
                continue;
            }
            let mut literal = 0;
            let fits = have.iter().zip(&want).all(|(h, w)| {
                if h.starts_with('{') && h.ends_with('}') {
                    !w.is_empty()
                } else {
                    literal += 1;
                    h == w
                }
            });
            if fits && best.is_none_or(|(_, n)| literal > n) {
                best = Some((template, literal));
            }
        }
        best.map(|(t, _)| t)
    }

    /// The operation object for `method` (any case) on a concrete path.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Value> {
        let template = self.template(path)?;
        self.doc["paths"][template].get(method.to_ascii_lowercase())
    }

    /// When the spec allows an operation, as its summary says ("Creates or
    /// updates a drive. Pre-boot only."); `None` when the summary says
    /// neither (`/vm`, `/actions`, `/logger`, ...).
    pub fn boot_phase(&self, method: &str, path: &str) -> Option<BootPhase> {
        let summary = self.operation(method, path)?["summary"]
            .as_str()?
            .to_ascii_lowercase();
        if summary.contains("pre-boot only") {
            Some(BootPhase::PreBoot)
        } else if summary.contains("post-boot only") {
            Some(BootPhase::PostBoot)
        } else {
            None
        }
    }

    /// The operation's description, whitespace-normalised (YAML folds it
    /// already; this only trims).
    pub fn description(&self, method: &str, path: &str) -> Option<String> {
        let d = self.operation(method, path)?["description"].as_str()?;
        Some(d.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The resolved, closed schema of the operation's `in: body` parameter,
    /// `None` when it takes no body.
    pub fn body_schema(&self, method: &str, path: &str) -> Result<Option<Value>, String> {
        let op = self.operation(method, path).ok_or_else(|| {
            format!(
                "{method} {path}: no such operation in the {} spec",
                self.version
            )
        })?;
        let body = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["in"] == "body");
        Ok(body.map(|p| self.closed(&p["schema"])))
    }

    /// `schema` with every `$ref` inlined and every object closed.
    pub fn closed(&self, schema: &Value) -> Value {
        let mut s = self.resolve(schema, &mut Vec::new());
        close(&mut s);
        s
    }

    fn resolve(&self, schema: &Value, stack: &mut Vec<String>) -> Value {
        match schema {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    let name = r
                        .strip_prefix("#/definitions/")
                        .unwrap_or_else(|| panic!("unsupported $ref {r}"));
                    assert!(!stack.iter().any(|s| s == name), "recursive $ref {r}");
                    let def = self.doc["definitions"]
                        .get(name)
                        .unwrap_or_else(|| panic!("$ref to missing definition {name}"));
                    stack.push(name.to_string());
                    // Draft 4 ignores a $ref's siblings (descriptions here).
                    let resolved = self.resolve(def, stack);
                    stack.pop();
                    return resolved;
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| (k.clone(), self.resolve(v, stack)))
                        .collect(),
                )
            }
            Value::Array(items) => {
                Value::Array(items.iter().map(|v| self.resolve(v, stack)).collect())
            }
            other => other.clone(),
        }
    }

    /// Checks one request: the operation exists, a body is sent exactly
    /// when the operation takes one, and the body validates.
    pub fn check(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(), String> {
        let schema = self.body_schema(method, path)?;
        match (schema, body) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(format!("{method} {path} takes no body")),
            (Some(_), None) => Err(format!("{method} {path} needs a body")),
            (Some(schema), Some(body)) => validate(&schema, body)
                .map_err(|e| format!("{method} {path} (spec {}): {e}", self.version)),
        }
    }

    /// The resolved, closed schema of an answer.
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Value {
        let op = self
            .operation(method, path)
            .unwrap_or_else(|| panic!("{method} {path}: no such operation"));
        let resp = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path}: no {status} answer in the spec"));
        self.closed(&resp["schema"])
    }

    /// Properties the spec calls deprecated that `body` sets, looked up
    /// against the operation's body schema (nested objects included).
    pub fn deprecated_fields(&self, method: &str, path: &str, body: &Value) -> Vec<String> {
        let mut found = Vec::new();
        if let Ok(Some(schema)) = self.body_schema(method, path) {
            deprecated_in(body, &schema, "", &mut found);
        }
        found
    }
}

fn deprecated_in(body: &Value, schema: &Value, at: &str, found: &mut Vec<String>) {
    let Some(fields) = body.as_object() else {
        return;
    };
    for (key, value) in fields {
        let prop = &schema["properties"][key];
        let desc = prop["description"].as_str().unwrap_or("");
        if desc.to_ascii_lowercase().contains("deprecated") {
            found.push(format!("{at}{key}"));
        }
        deprecated_in(value, prop, &format!("{at}{key}."), found);
    }
}

/// Adds `additionalProperties: false` to every object schema that lists
/// `properties` and says nothing about extra ones.
fn close(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close);
        }
        Value::Array(items) => items.iter_mut().for_each(close),
        _ => {}
    }
}

/// Validates `instance` against a draft 4 `schema`, listing every error.
pub(crate) fn validate(schema: &Value, instance: &Value) -> Result<(), String> {
    let validator = jsonschema::draft4::new(schema)
        .unwrap_or_else(|e| panic!("the spec schema does not compile: {e}\n{schema:#}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("at '{}': {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{instance} is invalid: {}", errors.join("; ")))
    }
}
