//! Daytona's published OpenAPI descriptions, embedded, and validation of JSON bodies against
//! their component schemas.
//!
//! The fake server checks every request body it receives against the schema the description
//! gives for that operation, so a test against the fake also tests that the client speaks the
//! published API, not just whatever the fake happens to accept. OpenAPI 3.0 schemas are close to
//! JSON Schema draft 7; the conversion here rewrites `$ref`s to `#/definitions/...`, turns
//! `nullable: true` into a `null` alternative, and drops keywords JSON Schema does not know.
//! [`Strictness::NoUnknownFields`] additionally rejects properties a schema does not declare
//! (the published schemas allow them), which is how a misspelt field in a request is caught.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value};

const API_YAML: &str = include_str!("../openapi/api-openapi.yaml");
const TOOLBOX_YAML: &str = include_str!("../openapi/toolbox-openapi.yaml");

/// Which description.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spec {
    /// The main API (`api-openapi.yaml`).
    Api,
    /// The per-sandbox toolbox API (`toolbox-openapi.yaml`).
    Toolbox,
}

/// How strictly to validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strictness {
    /// As published: undeclared properties are allowed.
    AsPublished,
    /// Undeclared properties are errors, in every object schema that declares `properties`.
    NoUnknownFields,
}

struct Loaded {
    /// `components.schemas`, converted to JSON Schema.
    definitions: Map<String, Value>,
    /// The raw document, for lookups by tests.
    document: Value,
}

static API: LazyLock<Result<Loaded, String>> = LazyLock::new(|| load(API_YAML));
static TOOLBOX: LazyLock<Result<Loaded, String>> = LazyLock::new(|| load(TOOLBOX_YAML));

type Compiled = Arc<jsonschema::Validator>;
type ValidatorKey = (Spec, String, Strictness);
static VALIDATORS: LazyLock<Mutex<HashMap<ValidatorKey, Compiled>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn loaded(spec: Spec) -> Result<&'static Loaded, String> {
    let l = match spec {
        Spec::Api => &*API,
        Spec::Toolbox => &*TOOLBOX,
    };
    l.as_ref().map_err(Clone::clone)
}

fn load(yaml: &str) -> Result<Loaded, String> {
    let document: Value = serde_yaml_ng::from_str(yaml)
        .map_err(|e| format!("the OpenAPI YAML does not parse: {e}"))?;
    let schemas = document
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .ok_or("the OpenAPI document has no components.schemas")?;
    let definitions = schemas
        .iter()
        .map(|(name, schema)| (name.clone(), convert(schema)))
        .collect();
    Ok(Loaded {
        definitions,
        document,
    })
}

/// The whole description as JSON, e.g. to look up an operation.
///
/// # Errors
/// When the embedded YAML does not parse (a broken copy in `openapi/`).
pub fn document(spec: Spec) -> Result<&'static Value, String> {
    Ok(&loaded(spec)?.document)
}

/// Whether the description has a component schema of this name.
#[must_use]
pub fn has_schema(spec: Spec, name: &str) -> bool {
    loaded(spec).is_ok_and(|l| l.definitions.contains_key(name))
}

/// Validates `value` against component schema `name`. Returns every violation, each with the
/// JSON path of the offending value.
///
/// ```
/// use serde_json::json;
/// use stigmer_daytona::openapi::{validate, Spec, Strictness};
///
/// assert!(validate(Spec::Toolbox, "ExecuteRequest", &json!({"command": "ls", "timeout": 5}), Strictness::NoUnknownFields).is_ok());
/// let errors = validate(Spec::Toolbox, "ExecuteRequest", &json!({"cmd": "ls"}), Strictness::NoUnknownFields).unwrap_err();
/// assert!(errors.iter().any(|e| e.contains("command")));
/// ```
///
/// # Errors
/// The list of violations; or one message when the schema does not exist or does not compile.
pub fn validate(
    spec: Spec,
    name: &str,
    value: &Value,
    strictness: Strictness,
) -> Result<(), Vec<String>> {
    let validator = validator(spec, name, strictness).map_err(|e| vec![e])?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_owned()
            } else {
                path
            };
            format!("{name}{path}: {e}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn validator(spec: Spec, name: &str, strictness: Strictness) -> Result<Compiled, String> {
    let key = (spec, name.to_owned(), strictness);
    if let Some(v) = VALIDATORS.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(v);
    }
    let loaded = loaded(spec)?;
    if !loaded.definitions.contains_key(name) {
        return Err(format!(
            "no component schema `{name}` in the {spec:?} description"
        ));
    }
    let mut definitions = loaded.definitions.clone();
    if strictness == Strictness::NoUnknownFields {
        for schema in definitions.values_mut() {
            forbid_unknown_fields(schema);
        }
    }
    let root = serde_json::json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "definitions": Value::Object(definitions),
        "allOf": [{ "$ref": format!("#/definitions/{name}") }],
    });
    let compiled = jsonschema::draft7::options()
        .should_validate_formats(false)
        .build(&root)
        .map_err(|e| format!("schema `{name}` does not compile: {e}"))?;
    let compiled = Arc::new(compiled);
    if let Ok(mut m) = VALIDATORS.lock() {
        m.insert(key, compiled.clone());
    }
    Ok(compiled)
}

/// OpenAPI 3.0 schema object → JSON Schema draft 7.
fn convert(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                match k.as_str() {
                    "$ref" => {
                        let target = v
                            .as_str()
                            .map(|r| r.replace("#/components/schemas/", "#/definitions/"))
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::String(target));
                    }
                    // Annotations and OpenAPI-only keywords.
                    "example" | "examples" | "nullable" | "discriminator" | "xml"
                    | "externalDocs" | "deprecated" | "readOnly" | "writeOnly" => {}
                    k if k.starts_with("x-") => {}
                    // Maps of names to schemas: convert the values, not the names.
                    "properties" | "definitions" | "patternProperties" => {
                        let converted = v
                            .as_object()
                            .map(|props| {
                                props
                                    .iter()
                                    .map(|(name, s)| (name.clone(), convert(s)))
                                    .collect::<Map<_, _>>()
                            })
                            .unwrap_or_default();
                        out.insert(k.to_owned(), Value::Object(converted));
                    }
                    // Literal values, left alone.
                    "enum" | "const" | "default" | "required" => {
                        out.insert(k.to_owned(), v.clone());
                    }
                    _ => {
                        out.insert(k.to_owned(), convert(v));
                    }
                }
            }
            let nullable = map.get("nullable").and_then(Value::as_bool) == Some(true);
            let mut out = Value::Object(out);
            if nullable {
                out = serde_json::json!({ "anyOf": [out, { "type": "null" }] });
            }
            // A `$ref` with siblings (OpenAPI 3.0 ignores them, draft 7 too): keep the ref only
            // inside an allOf so the siblings (description, ...) are harmless.
            if let Value::Object(m) = &out
                && m.contains_key("$ref")
                && m.len() > 1
            {
                let mut m = m.clone();
                let r = m.remove("$ref").unwrap_or(Value::Null);
                m.insert("allOf".into(), serde_json::json!([{ "$ref": r }]));
                out = Value::Object(m);
            }
            out
        }
        Value::Array(items) => Value::Array(items.iter().map(convert).collect()),
        other => other.clone(),
    }
}

fn forbid_unknown_fields(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, v) in map.iter_mut() {
                if k == "enum" || k == "const" || k == "default" {
                    continue;
                }
                forbid_unknown_fields(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_unknown_fields),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_descriptions_load_and_have_the_schemas_the_client_uses() {
        for name in [
            "CreateSandbox",
            "Sandbox",
            "ListSandboxesResponse",
            "ToolboxProxyUrl",
        ] {
            assert!(has_schema(Spec::Api, name), "{name}");
        }
        for name in [
            "ExecuteRequest",
            "ExecuteResponse",
            "CreateSessionRequest",
            "SessionExecuteRequest",
            "SessionExecuteResponse",
            "Command",
            "SessionCommandLogsResponse",
        ] {
            assert!(has_schema(Spec::Toolbox, name), "{name}");
        }
    }

    #[test]
    fn refs_types_and_strictness_are_enforced() {
        let ok = json!({"snapshot": "s", "cpu": 2, "labels": {"a": "b"}});
        assert!(validate(Spec::Api, "CreateSandbox", &ok, Strictness::NoUnknownFields).is_ok());
        // cpu is an integer in CreateSandbox.
        let bad = json!({"cpu": 1.5});
        assert!(validate(Spec::Api, "CreateSandbox", &bad, Strictness::AsPublished).is_err());
        // labels values must be strings.
        let bad = json!({"labels": {"a": 1}});
        assert!(validate(Spec::Api, "CreateSandbox", &bad, Strictness::AsPublished).is_err());
        // A misspelt field passes as published, fails strictly.
        let typo = json!({"networkAllowlist": "10.0.0.0/8"});
        assert!(validate(Spec::Api, "CreateSandbox", &typo, Strictness::AsPublished).is_ok());
        assert!(
            validate(
                Spec::Api,
                "CreateSandbox",
                &typo,
                Strictness::NoUnknownFields
            )
            .is_err()
        );
        // $ref resolution: the state of a Sandbox must be a SandboxState.
        let mut sandbox = json!({
            "id": "a", "organizationId": "o", "name": "a", "user": "daytona", "env": {},
            "labels": {}, "public": false, "networkBlockAll": false, "target": "us",
            "cpu": 1, "gpu": 0, "memory": 1, "disk": 3, "toolboxProxyUrl": "http://x",
            "state": "started"
        });
        assert!(validate(Spec::Api, "Sandbox", &sandbox, Strictness::AsPublished).is_ok());
        sandbox["state"] = json!("flying");
        assert!(validate(Spec::Api, "Sandbox", &sandbox, Strictness::AsPublished).is_err());
        // nullable: nextCursor may be null.
        let page = json!({"items": [], "nextCursor": null});
        assert!(
            validate(
                Spec::Api,
                "ListSandboxesResponse",
                &page,
                Strictness::AsPublished
            )
            .is_ok()
        );
        assert!(validate(Spec::Api, "NoSuchSchema", &page, Strictness::AsPublished).is_err());
    }
}
