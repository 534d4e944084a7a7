//! A small service that accepts only credbroker JWTs for its audience, verified locally
//! with `credbroker::verify` (revocations arrive through the broker's feed; no call to the
//! broker per request).
//!
//! ```text
//! CREDBROKER_URL=https://localhost:8443 CREDBROKER_CA_FILE=/tmp/dev/ca.pem \
//! CREDBROKER_ADMIN_TOKEN=… SERVICE_AUDIENCE=demo-api SERVICE_LISTEN=127.0.0.1:3000 \
//!   cargo run --example protected_service
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/hello
//! ```

use axum::routing::get;
use axum::{Extension, Json, Router};
use credbroker::verify::{FeedCredential, VerifiedJwt, Verifier, VerifierConfig};
use serde_json::json;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The protected handler: runs only with a verified, unrevoked token for our audience.
async fn hello(VerifiedJwt(claims): VerifiedJwt) -> Json<serde_json::Value> {
    Json(json!({
        "hello": claims.sub,
        "owner": claims.owner,
        "scopes": claims.scopes(),
        "acting_for_it": claims.actors(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = env("CREDBROKER_URL", "https://localhost:8443");
    let audience = env("SERVICE_AUDIENCE", "demo-api");
    let listen = env("SERVICE_LISTEN", "127.0.0.1:3000");
    let mut config = VerifierConfig::new(&broker).audience(&audience);
    if let Ok(ca) = std::env::var("CREDBROKER_CA_FILE") {
        config = config.ca_file(ca);
    }
    // Any of: the admin token, a JWT with scope credbroker:introspect; none in `dev` mode.
    if let Ok(token) = std::env::var("CREDBROKER_ADMIN_TOKEN") {
        config = config.feed_credential(FeedCredential::AdminToken(token));
    } else if let Ok(path) = std::env::var("CREDBROKER_FEED_TOKEN_FILE") {
        config = config.feed_credential(FeedCredential::BearerFile(path.into()));
    }
    let verifier = Verifier::connect(config).await?;
    let app = Router::new()
        .route("/hello", get(hello))
        .layer(Extension(verifier));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "protected service on http://{} (audience {audience}, broker {broker})",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
