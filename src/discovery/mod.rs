//! Discovery: what catalogs and agents learn about a priced rule without calling the origin —
//! its compiled `[rule.discovery]`, the `bazaar` extension its 402s carry and the
//! `payment-identifier` declaration (the documents that list rules are `proxy/documents.rs`).

use serde_json::{Map, Value, json};

/// A rule as discovery describes it, compiled from `[rule.discovery]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDiscovery {
    /// In the `bazaar` extension and the documents.
    pub listed: bool,
    /// The method callers use (upper case).
    pub method: String,
    /// `json`, `form-data` or `text` for body methods; `None` for query methods.
    pub body_type: Option<String>,
    pub input: Option<Value>,
    pub input_schema: Option<Value>,
    pub output_example: Option<Value>,
    pub output_schema: Option<Value>,
    /// The path the documents list (`None`: a pattern with no example path, not listed there).
    pub path: Option<String>,
}

/// `[discovery]`, compiled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiscoverySettings {
    pub bazaar: bool,
    pub well_known: Option<String>,
    pub openapi: Option<String>,
    pub title: String,
    pub version: String,
    pub description: Option<String>,
    pub ownership_proofs: Vec<String>,
}

/// Methods that carry their input in the query string.
pub const QUERY_METHODS: [&str; 3] = ["GET", "HEAD", "DELETE"];
/// Methods that carry their input in the body.
pub const BODY_METHODS: [&str; 3] = ["POST", "PUT", "PATCH"];
/// Body types the `bazaar` extension knows.
pub const BODY_TYPES: [&str; 3] = ["json", "form-data", "text"];

const SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

impl RuleDiscovery {
    /// The `bazaar` extension declaration (`{info, schema}`): the input and output as the
    /// reference `declareDiscoveryExtension` shapes them, with the method fixed to this
    /// rule's, so the schema validates the info.
    pub fn bazaar(&self) -> Value {
        let mut input = Map::new();
        input.insert("type".into(), json!("http"));
        input.insert("method".into(), json!(self.method));
        let mut input_props = Map::new();
        input_props.insert("type".into(), json!({"type": "string", "const": "http"}));
        input_props.insert(
            "method".into(),
            json!({"type": "string", "enum": [self.method]}),
        );
        let mut required = vec![json!("type"), json!("method")];
        let schema = self
            .input_schema
            .clone()
            .unwrap_or_else(|| json!({"properties": {}}));
        match &self.body_type {
            Some(body_type) => {
                input.insert("bodyType".into(), json!(body_type));
                input.insert(
                    "body".into(),
                    self.input.clone().unwrap_or_else(|| json!({})),
                );
                input_props.insert(
                    "bodyType".into(),
                    json!({"type": "string", "enum": BODY_TYPES}),
                );
                input_props.insert("body".into(), schema);
                required.push(json!("bodyType"));
                required.push(json!("body"));
            }
            None => {
                input.insert(
                    "queryParams".into(),
                    self.input.clone().unwrap_or_else(|| json!({})),
                );
                let mut query = Map::new();
                query.insert("type".into(), json!("object"));
                if let Value::Object(s) = schema {
                    for (k, v) in s {
                        query.entry(k).or_insert(v);
                    }
                }
                input_props.insert("queryParams".into(), Value::Object(query));
            }
        }
        let mut info = Map::new();
        info.insert("input".into(), Value::Object(input));
        let mut props = Map::new();
        props.insert(
            "input".into(),
            json!({
                "type": "object",
                "properties": Value::Object(input_props),
                "required": required,
                "additionalProperties": false,
            }),
        );
        if let Some(example) = &self.output_example {
            info.insert("output".into(), json!({"type": "json", "example": example}));
            let mut example_schema = Map::new();
            if example.is_object() {
                example_schema.insert("type".into(), json!("object"));
            }
            if let Some(Value::Object(s)) = &self.output_schema {
                for (k, v) in s {
                    example_schema.insert(k.clone(), v.clone());
                }
            }
            props.insert(
                "output".into(),
                json!({
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "example": Value::Object(example_schema),
                    },
                    "required": ["type"],
                }),
            );
        }
        json!({
            "info": Value::Object(info),
            "schema": {
                "$schema": SCHEMA_DIALECT,
                "type": "object",
                "properties": Value::Object(props),
                "required": ["input"],
            },
        })
    }
}

/// The `payment-identifier` extension declaration: clients may (or, `required`, must) name
/// each payment so that a retry is recognised.
pub fn payment_identifier(required: bool) -> Value {
    json!({
        "info": {"required": required},
        "schema": {
            "$schema": SCHEMA_DIALECT,
            "type": "object",
            "properties": {
                "required": {"type": "boolean"},
                "id": {
                    "type": "string",
                    "minLength": crate::x402::extensions::PAYMENT_ID_MIN,
                    "maxLength": crate::x402::extensions::PAYMENT_ID_MAX,
                    "pattern": "^[a-zA-Z0-9_-]+$",
                },
            },
            "required": ["required"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: &str, body: Option<&str>) -> RuleDiscovery {
        RuleDiscovery {
            listed: true,
            method: method.into(),
            body_type: body.map(Into::into),
            input: Some(json!({"city": "Paris"})),
            input_schema: Some(
                json!({"properties": {"city": {"type": "string"}}, "required": ["city"]}),
            ),
            output_example: Some(json!({"temperature": 21})),
            output_schema: None,
            path: Some("/weather".into()),
        }
    }

    #[test]
    fn a_query_rule_declares_query_params_and_its_method() {
        let b = rule("GET", None).bazaar();
        assert_eq!(b["info"]["input"]["method"], "GET");
        assert_eq!(b["info"]["input"]["queryParams"]["city"], "Paris");
        let q = &b["schema"]["properties"]["input"]["properties"]["queryParams"];
        assert_eq!(q["type"], "object");
        assert_eq!(q["required"][0], "city");
        assert_eq!(b["info"]["output"]["example"]["temperature"], 21);
    }

    #[test]
    fn a_body_rule_declares_its_body_type_and_schema() {
        let b = rule("POST", Some("json")).bazaar();
        assert_eq!(b["info"]["input"]["bodyType"], "json");
        assert_eq!(b["info"]["input"]["body"]["city"], "Paris");
        let input = &b["schema"]["properties"]["input"];
        assert_eq!(input["properties"]["method"]["enum"][0], "POST");
        assert!(
            input["required"]
                .as_array()
                .unwrap()
                .contains(&json!("body"))
        );
    }
}
