//! `GET /api/v1/openapi.json` (SPEC §12) on a real host: served without a token but within the
//! Host and Origin checks, OpenAPI 3.1, and every route it lists is one the host routes, with
//! exactly the methods it lists.

use reqwest::Method;
use serde_json::Value;
use supersocket_tests::HostProcess;

const CONFIG: &str = r#"
[admin]
token = "s3cret"

[[servers]]
name = "Cmd"
type = "command"
listeners = [{ ip = "Loopback", port = 0 }]
"#;

async fn fetch(host: &HostProcess, method: Method, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = host.http().request(method, format!("{}{path}", host.admin));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("the host answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_open_but_keeps_the_host_and_origin_checks() {
    let host = HostProcess::start(CONFIG);
    let (status, doc) = fetch(&host, Method::GET, "/api/v1/openapi.json", &[]).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let (status, body) = fetch(&host, Method::GET, "/api/v1/openapi.json", &[("Host", "evil.example")]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    let origin = [("Origin", "http://evil.example")];
    let (status, body) = fetch(&host, Method::GET, "/api/v1/openapi.json", &origin).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_routed_with_exactly_its_methods() {
    let host = HostProcess::start(CONFIG);
    let (_, doc) = fetch(&host, Method::GET, "/api/v1/openapi.json", &[]).await;
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20, "{} paths", paths.len());
    for (template, item) in paths {
        // Streams are only opened (their answer's head), never read to an end they lack.
        let path = template
            .replace("{name}", "Nobody")
            .replace("{id}", "0")
            .replace("{type}", "echo");
        for method in &methods {
            let documented = item.get(method.as_str().to_ascii_lowercase()).is_some();
            let response = host
                .http()
                .request(method.clone(), format!("{}{path}", host.admin))
                .bearer_auth("s3cret")
                .body("{}")
                .send()
                .await
                .expect("the host answers");
            let status = response.status().as_u16();
            let streams = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body: Value = if streams {
                Value::Null
            } else {
                response.json().await.unwrap_or(Value::Null)
            };
            let routed = status != 405 && body["error"]["message"] != "no such route";
            assert_eq!(routed, documented, "{method} {path}: {status} {body}");
        }
    }
}
