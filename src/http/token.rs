//! `POST /v1/token`: RFC 8693 token exchange and `client_credentials` over mTLS.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, Door};
use super::{AppState, ConnInfo, LimitedBody, form_pairs, media_type};
use crate::attest::join_token::JOIN_TOKEN_TYPE;
use crate::broker::{ActorCredential, Ask, IssuedToken, PresentedToken};

pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The parsed form of a token request.
#[derive(Default)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub subject_token: Option<String>,
    pub subject_token_type: Option<String>,
    pub actor_token: Option<String>,
    pub actor_token_type: Option<String>,
    pub requested_token_type: Option<String>,
    pub scope: Option<String>,
    pub ttl: Option<String>,
    pub audiences: Vec<String>,
}

impl TokenForm {
    /// Parses an urlencoded body. Unknown parameters are ignored, as RFC 6749 §3.1 requires;
    /// a parameter other than `audience`/`resource` given twice is refused (§3.2).
    pub fn parse(body: &[u8]) -> Result<TokenForm, ApiError> {
        let mut form = TokenForm::default();
        for (name, value) in form_pairs(body) {
            let slot = match name.as_ref() {
                "grant_type" => &mut form.grant_type,
                "subject_token" => &mut form.subject_token,
                "subject_token_type" => &mut form.subject_token_type,
                "actor_token" => &mut form.actor_token,
                "actor_token_type" => &mut form.actor_token_type,
                "requested_token_type" => &mut form.requested_token_type,
                "scope" => &mut form.scope,
                "ttl" => &mut form.ttl,
                "audience" | "resource" => {
                    if value.is_empty() {
                        return Err(ApiError::invalid_request(format!(
                            "parameter `{name}` is empty"
                        )));
                    }
                    if !form.audiences.iter().any(|a| *a == value) {
                        form.audiences.push(value.into_owned());
                    }
                    continue;
                }
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::invalid_request(format!(
                    "parameter `{name}` is given more than once"
                )));
            }
            *slot = Some(value.into_owned());
        }
        Ok(form)
    }

    fn ask(&self) -> Result<Ask, ApiError> {
        let scopes = self
            .scope
            .as_deref()
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let ttl = match self.ttl.as_deref() {
            None => None,
            Some(t) => match t.parse::<u64>() {
                Ok(secs) if secs > 0 => Some(Duration::from_secs(secs)),
                _ => {
                    return Err(ApiError::invalid_request(
                        "parameter `ttl` must be a positive number of seconds",
                    ));
                }
            },
        };
        if let Some(t) = self.requested_token_type.as_deref()
            && t != TOKEN_TYPE_JWT
            && t != TOKEN_TYPE_ACCESS_TOKEN
        {
            return Err(ApiError::invalid_request(format!(
                "requested_token_type {:?} is not supported; use {TOKEN_TYPE_JWT} or {TOKEN_TYPE_ACCESS_TOKEN}",
                truncate(t)
            )));
        }
        Ok(Ask {
            audiences: self.audiences.clone(),
            scopes,
            ttl,
        })
    }
}

/// The RFC 8693 §2.2.1 success response.
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: Option<String>,
}

impl TokenResponse {
    fn new(issued: IssuedToken) -> Self {
        TokenResponse {
            access_token: issued.token,
            expires_in: issued.expires_in,
            scope: (!issued.scopes.is_empty()).then(|| issued.scopes.join(" ")),
        }
    }
}

impl IntoResponse for TokenResponse {
    fn into_response(self) -> Response {
        // Written out here rather than by serde_json, which would scan the token's hundreds
        // of bytes one by one for characters to escape: it is a compact JWS we signed,
        // base64url and dots, which a JSON string holds as they are.
        debug_assert!(
            self.access_token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        );
        let mut body = Vec::with_capacity(self.access_token.len() + 160);
        body.extend_from_slice(b"{\"access_token\":\"");
        body.extend_from_slice(self.access_token.as_bytes());
        body.extend_from_slice(b"\",\"issued_token_type\":\"");
        body.extend_from_slice(TOKEN_TYPE_JWT.as_bytes());
        body.extend_from_slice(b"\",\"token_type\":\"Bearer\",\"expires_in\":");
        body.extend_from_slice(itoa::Buffer::new().format(self.expires_in).as_bytes());
        if let Some(scope) = &self.scope {
            body.extend_from_slice(b",\"scope\":");
            if serde_json::to_writer(&mut body, scope).is_err() {
                return ApiError::internal().into_response();
            }
        }
        body.push(b'}');
        (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
                (header::PRAGMA, "no-cache"),
            ],
            body,
        )
            .into_response()
    }
}

/// `POST /v1/token`.
pub async fn token(
    State(state): State<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<TokenResponse, ApiError> {
    if media_type(&headers).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(ApiError::invalid_request(
            "the token endpoint takes application/x-www-form-urlencoded",
        ));
    }
    let form = TokenForm::parse(&body)?;
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or_else(|| ApiError::invalid_request("missing parameter `grant_type`"))?;
    match grant_type {
        GRANT_TOKEN_EXCHANGE => token_exchange(&state, &conn, &form).await,
        GRANT_CLIENT_CREDENTIALS => client_credentials(&state, &conn, &form).await,
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "grant_type {:?} is not supported; use {GRANT_TOKEN_EXCHANGE} or {GRANT_CLIENT_CREDENTIALS}",
                truncate(other)
            ),
        )),
    }
}

async fn token_exchange(
    state: &AppState,
    conn: &ConnInfo,
    form: &TokenForm,
) -> Result<TokenResponse, ApiError> {
    let subject_token = form
        .subject_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid_request("missing parameter `subject_token`"))?;
    let subject_type = form
        .subject_token_type
        .as_deref()
        .ok_or_else(|| ApiError::invalid_request("missing parameter `subject_token_type`"))?;
    let subject = presented_token(subject_token, subject_type, "subject_token_type")?;
    let actor = actor_credential(form, conn)?;
    let ask = form.ask()?;
    let caller = conn.caller();
    let issued = match &actor {
        None => state.broker.exchange(&subject, &ask, &caller).await,
        Some(actor) => {
            state
                .broker
                .exchange_delegated(&subject, actor, &ask, &caller)
                .await
        }
    };
    issued
        .map(TokenResponse::new)
        .map_err(|e| ApiError::from_broker(&e, Door::TokenExchange))
}

/// `client_credentials` over mTLS (SPEC §6.1): the client certificate is the attestation;
/// no or an untrusted certificate → 401 `invalid_client`, no rule → 400 `unauthorized_client`.
async fn client_credentials(
    state: &AppState,
    conn: &ConnInfo,
    form: &TokenForm,
) -> Result<TokenResponse, ApiError> {
    if form.subject_token.is_some() || form.actor_token.is_some() {
        return Err(ApiError::invalid_request(
            "client_credentials takes no subject_token or actor_token",
        ));
    }
    let ask = form.ask()?;
    state
        .broker
        .client_credentials(conn.peer_certs.as_ref(), &ask, &conn.caller())
        .await
        .map(TokenResponse::new)
        .map_err(|e| ApiError::from_broker(&e, Door::ClientCredentials))
}

/// The actor token type naming the X.509-SVID presented on this connection; the
/// `actor_token` is that certificate's `x5t#S256` (RFC 8705 thumbprint), so choosing the
/// certificate as the actor is explicit and bound to the connection.
pub const TOKEN_TYPE_X509_SVID: &str = "urn:credbroker:token-type:x509-svid";

/// The actor of a delegation (SPEC §6.3): `actor_token` and `actor_token_type` come
/// together (RFC 8693 §2.1) or not at all. A client certificate alone never makes a
/// request a delegation.
fn actor_credential(
    form: &TokenForm,
    conn: &ConnInfo,
) -> Result<Option<ActorCredential>, ApiError> {
    match (
        form.actor_token.as_deref(),
        form.actor_token_type.as_deref(),
    ) {
        (None, None) => Ok(None),
        (Some(token), Some(token_type)) => {
            if token.is_empty() {
                return Err(ApiError::invalid_request(
                    "parameter `actor_token` is empty",
                ));
            }
            match token_type {
                TOKEN_TYPE_JWT | TOKEN_TYPE_ACCESS_TOKEN => {
                    Ok(Some(ActorCredential::Jwt(token.to_string())))
                }
                TOKEN_TYPE_X509_SVID => {
                    let certs = conn.peer_certs.clone().ok_or_else(|| {
                        ApiError::invalid_request(
                            "an x509-svid actor_token needs the actor's SVID presented over mTLS",
                        )
                    })?;
                    let presented = certs.leaf().map(|c| crate::tls::thumbprint(c));
                    if presented.as_deref() != Some(token) {
                        return Err(ApiError::invalid_request(
                            "actor_token must be the x5t#S256 thumbprint of the client certificate presented on this connection",
                        ));
                    }
                    Ok(Some(ActorCredential::PeerSvid(certs)))
                }
                other => Err(ApiError::invalid_request(format!(
                    "actor_token_type {:?} is not supported; use {TOKEN_TYPE_JWT}, or {TOKEN_TYPE_X509_SVID} with the SVID presented over mTLS",
                    truncate(other)
                ))),
            }
        }
        (Some(_), None) => Err(ApiError::invalid_request(
            "`actor_token` requires `actor_token_type`",
        )),
        (None, Some(_)) => Err(ApiError::invalid_request(
            "`actor_token_type` was given without `actor_token`",
        )),
    }
}

/// Classifies a presented token by its RFC 8693 token type.
pub fn presented_token(
    token: &str,
    token_type: &str,
    parameter: &str,
) -> Result<PresentedToken, ApiError> {
    match token_type {
        TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN | TOKEN_TYPE_ACCESS_TOKEN => {
            Ok(PresentedToken::Jwt(token.to_string()))
        }
        JOIN_TOKEN_TYPE => Ok(PresentedToken::JoinToken(token.to_string())),
        other => Err(ApiError::invalid_request(format!(
            "{parameter} {:?} is not supported; use {TOKEN_TYPE_JWT}, {TOKEN_TYPE_ID_TOKEN} or {JOIN_TOKEN_TYPE}",
            truncate(other)
        ))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::TokenForm;
    use crate::http::token_param;

    fn refused(body: &str) -> String {
        match TokenForm::parse(body.as_bytes()) {
            Ok(_) => panic!("accepted {body:?}"),
            Err(e) => {
                assert_eq!((e.status.as_u16(), e.code), (400, "invalid_request"));
                e.description
            }
        }
    }

    #[test]
    fn the_form_is_decoded_and_collected() {
        let form = TokenForm::parse(
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
              &scope=read+deploy%3Astaging&audience=a&resource=b&audience=a&color=blue&ttl=60",
        )
        .unwrap();
        assert_eq!(
            form.grant_type.as_deref(),
            Some("urn:ietf:params:oauth:grant-type:token-exchange")
        );
        assert_eq!(form.scope.as_deref(), Some("read deploy:staging"));
        // `audience` and `resource` together, in order, each once.
        assert_eq!(form.audiences, ["a", "b"]);
        assert_eq!(form.ttl.as_deref(), Some("60"));
        assert!(form.subject_token.is_none());
    }

    #[test]
    fn repeated_or_empty_parameters_are_refused() {
        assert!(refused("scope=a&scope=b").contains("`scope` is given more than once"));
        assert!(
            refused("subject_token=x&subject_token=x").contains("`subject_token` is given more")
        );
        assert!(refused("audience=a&audience=").contains("`audience` is empty"));
        assert!(refused("resource=").contains("`resource` is empty"));
    }

    #[test]
    fn the_token_parameter_is_needed_exactly_once() {
        assert_eq!(token_param(b"token=a%2Bb&x=1").unwrap(), "a+b");
        for body in ["", "x=1", "token=a&token=b"] {
            let e = token_param(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_request");
            assert!(e.description.contains("exactly once"), "{body:?}");
        }
    }

    #[test]
    fn form_pairs_match_form_urlencoded() {
        let bodies: [&[u8]; 15] = [
            b"",
            b"&",
            b"&&",
            b"=",
            b"a",
            b"a=b&c=d",
            b"&a=b&&c=&=e&",
            b"a&b=",
            b"a==b=c",
            b"subject_token=eyJh.eyJp.c2ln-_&grant_type=urn%3Aietf",
            b"scope=read+write&x=%41%zz%",
            b"x=\xff\xfe&y=ok",
            b"x%3Dy=1",
            b"caf\xc3\xa9=th\xc3\xa9",
            b"+=%2B",
        ];
        for body in bodies {
            let ours: Vec<_> = crate::http::form_pairs(body).collect();
            let theirs: Vec<_> = form_urlencoded::parse(body).collect();
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
