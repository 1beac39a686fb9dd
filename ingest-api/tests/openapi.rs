//! The OpenAPI document and the served routes agree: the document lists
//! exactly the routes the server has, every documented operation is
//! answered with one of its documented statuses and media types, and a
//! method the document does not list is refused with 405.
//!
//! Response bodies are checked against the document's schemas by the
//! schemathesis run in `./deploy/local test`, against the running API.

mod common;

use std::collections::BTreeSet;

use ingest_api::handlers::pages::OPENAPI_JSON;
use ingest_api::routes::ROUTES;
use serde_json::Value;
use warp::http::StatusCode;

use common::app;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

fn document() -> Value {
    serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON")
}

/// Every `(METHOD, path)` the document describes.
fn documented_operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.to_ascii_uppercase().as_str()))
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

/// Follows a local `$ref` (`#/components/…`) if `value` is one.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            document.pointer(pointer).expect("the reference resolves")
        }
        None => value,
    }
}

/// A concrete request for a documented operation, from its examples: the
/// path with its parameters filled in, required query parameters, and the
/// first example body of the first media type.
fn example_request(
    document: &Value,
    method: &str,
    path: &str,
    operation: &Value,
) -> warp::test::RequestBuilder {
    let mut concrete = path.to_owned();
    let mut query = Vec::new();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let parameter = resolve(document, parameter);
        let name = parameter["name"].as_str().expect("a parameter name");
        let example = parameter["example"].as_str();
        match parameter["in"].as_str() {
            Some("path") => {
                let example = example.expect("a path parameter has an example");
                concrete = concrete.replace(&format!("{{{name}}}"), example);
            }
            Some("query") if parameter["required"] == true => {
                let example = example.expect("a required query parameter has an example");
                query.push(format!("{name}={example}"));
            }
            _ => {}
        }
    }
    if !query.is_empty() {
        concrete = format!("{concrete}?{}", query.join("&"));
    }
    let mut request = warp::test::request().method(method).path(&concrete);
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        let (media_type, body) = content.iter().next().expect("a request media type");
        let example = body["examples"]
            .as_object()
            .and_then(|examples| examples.values().next())
            .map(|example| &example["value"])
            .expect("a request body example");
        let encoded = match media_type.as_str() {
            "application/x-www-form-urlencoded" => {
                let pairs: Vec<(String, String)> = example
                    .as_object()
                    .expect("a form example is an object")
                    .iter()
                    .map(|(name, value)| (name.clone(), value.as_str().expect("string").to_owned()))
                    .collect();
                serde_urlencoded::to_string(pairs).expect("form encoding")
            }
            _ => example.to_string(),
        };
        request = request.header("content-type", media_type).body(encoded);
    }
    request
}

#[test]
fn the_document_is_openapi_3_1_and_lists_exactly_the_served_routes() {
    let document = document();
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1.")),
        "an OpenAPI 3.1 document"
    );
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    let documented = documented_operations(&document);
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );
}

#[tokio::test]
async fn every_documented_operation_answers_with_a_documented_status_and_media_type() {
    let document = document();
    let app = app();
    for (method, path) in documented_operations(&document) {
        let operation = &document["paths"][&path][method.to_ascii_lowercase()];
        let response = example_request(&document, &method, &path, operation)
            .reply(&app)
            .await;
        let status = response.status().as_u16().to_string();
        let documented = resolve(&document, &operation["responses"][&status]);
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which the document does not list"
        );
        let media_type = response.headers()["content-type"]
            .to_str()
            .expect("an ASCII content type");
        let essence = media_type.split(';').next().unwrap_or_default().trim();
        assert!(
            documented["content"].get(essence).is_some(),
            "{method} {path} answered {status} as {media_type}, which the document does not list"
        );
    }
}

#[tokio::test]
async fn a_method_the_document_does_not_list_is_refused_with_405() {
    let document = document();
    let app = app();
    let documented = documented_operations(&document);
    for path in document["paths"].as_object().expect("paths").keys() {
        let concrete = path
            .replace("{acc_nbr}", "13800138000")
            .replace("{name}", "app.css");
        for method in METHODS {
            if documented.contains(&(method.to_owned(), path.clone())) {
                continue;
            }
            let response = warp::test::request()
                .method(method)
                .path(&concrete)
                .reply(&app)
                .await;
            assert_eq!(
                response.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
        }
    }
}

#[tokio::test]
async fn the_served_document_is_the_one_in_the_repository() {
    let response = warp::test::request()
        .path("/openapi.json")
        .reply(&app())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = serde_json::from_slice(response.body()).expect("JSON");
    assert_eq!(served, document());
}

#[test]
fn who_may_read_results_is_documented_on_both_reads_and_the_token_on_both_submissions() {
    let document = document();
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["resultsBearer"]["scheme"], "bearer");
    assert_eq!(schemes["resultsTokenQuery"]["in"], "query");
    assert_eq!(schemes["resultsTokenQuery"]["name"], "token");
    for path in ["/v1/accounts/{acc_nbr}/scores", "/graderesult"] {
        let operation = &document["paths"][path]["get"];
        assert!(
            operation["security"]
                .as_array()
                .is_some_and(|schemes| !schemes.is_empty()),
            "{path} names its security scheme"
        );
        let refused = resolve(&document, &operation["responses"]["401"]);
        assert!(
            refused["content"]["application/json"].is_object(),
            "{path}: 401 and its body"
        );
    }
    for (path, status) in [("/score", "200"), ("/v1/scores", "202")] {
        let accepted = &document["paths"][path]["post"]["responses"][status];
        assert!(
            accepted["headers"]["X-Results-Token"].is_object(),
            "{path} documents X-Results-Token"
        );
    }
    let accepted = &document["components"]["schemas"]["Accepted"];
    assert!(
        accepted["required"]
            .as_array()
            .expect("required")
            .contains(&Value::from("results_token"))
    );
}
