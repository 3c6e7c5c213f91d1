//! JSON Web Tokens on upgrade: where a client may put one, and checking it (signature,
//! `exp` and `nbf` with a leeway, `aud` and `iss` when configured) into [`Grants`].

use std::borrow::Cow;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{AlgorithmFamily, DecodingKey, Validation};

use crate::proto::handshake::Request;

use super::config::{JwtConfig, JwtKey};
use super::grants::Grants;

/// The query parameter a token may come in.
const QUERY_PARAMETER: &str = "token";

/// The claims the server reads; any others are ignored.
#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
}

/// Checks tokens against one key.
pub(crate) struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    cookie: Option<String>,
}

impl TokenVerifier {
    /// Loads the key; an unreadable or unusable key is named with its setting.
    pub fn new(config: &JwtConfig) -> Result<Self, String> {
        let (key, family) = match &config.key {
            JwtKey::Secret(secret) => {
                let bytes = secret.load()?;
                let key = DecodingKey::from_secret(&bytes)
                    .map_err(|err| format!("unusable secret: {err}"))?;
                (key, AlgorithmFamily::Hmac)
            }
            JwtKey::PublicKey(path) => public_key(path)?,
        };
        let mut validation = Validation::new_for_family(family);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            cookie: config.cookie.clone(),
        })
    }

    /// The token a request carries: `Authorization: Bearer`, else the `token` query
    /// parameter, else the configured cookie.
    pub fn token_of<'r>(&self, request: &'r Request) -> Option<Cow<'r, str>> {
        if let Some(token) = request.header("authorization").and_then(bearer) {
            return Some(token.into());
        }
        if let Some(token) = request
            .query()
            .and_then(|q| query_value(q, QUERY_PARAMETER))
        {
            return Some(token);
        }
        let cookie = self.cookie.as_deref()?;
        request
            .cookies()
            .find(|(name, _)| *name == cookie)
            .map(|(_, value)| value.into())
    }

    /// Where a token may be sent, for the message that says none was.
    pub fn where_tokens_go(&self) -> String {
        let mut places =
            format!("an Authorization: Bearer header or a `{QUERY_PARAMETER}` query parameter");
        if let Some(cookie) = &self.cookie {
            places = places.replace(" or ", ", ") + &format!(" or the `{cookie}` cookie");
        }
        places
    }

    /// Checks `token`; the error names what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<Grants, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|err| describe(err.kind()))?;
        let claims = data.claims;
        Grants::from_claims(claims.sub, claims.subscribe, claims.publish)
    }
}

/// A PEM public key: RSA, then EC, then Ed25519.
fn public_key(path: &Path) -> Result<(DecodingKey, AlgorithmFamily), String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(format!(
            "{shown} holds a private key: give the server the public key only"
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, AlgorithmFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, AlgorithmFamily::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, AlgorithmFamily::Ed));
    }
    Err(format!(
        "{shown} is not a PEM RSA, EC (P-256, P-384) or Ed25519 public key"
    ))
}

/// The message a refused token gets.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => {
            "bad signature: the token was not signed with this server's key".into()
        }
        ErrorKind::InvalidAlgorithm => {
            "token signed with an algorithm this server's key does not use".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("token has no `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => format!("malformed `{claim}` claim"),
        ErrorKind::InvalidAudience => "token is for another audience (aud)".into(),
        ErrorKind::InvalidIssuer => "token from another issuer (iss)".into(),
        ErrorKind::Json(err) => format!("malformed claims: {err}"),
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "malformed token".into()
        }
        other => format!("unusable token: {other:?}"),
    }
}

/// The credentials of `Authorization: Bearer CREDENTIALS` (the scheme is case-insensitive).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The percent-decoded value of parameter `name` in a query string.
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    let value = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)?;
    if !value.contains('%') {
        return Some(value.into());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |i: usize| bytes.get(i).and_then(|&b| (b as char).to_digit(16));
        match (bytes[at], hex(at + 1), hex(at + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                at += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Into::into)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, encode};

    use super::super::config::Secret;
    use super::*;

    const SECRET: &str = "correct horse battery staple";

    fn verifier(cookie: Option<&str>) -> TokenVerifier {
        let mut config = JwtConfig::new(JwtKey::Secret(Secret::Value(SECRET.into())));
        config.cookie = cookie.map(Into::into);
        config.leeway = Duration::from_secs(5);
        TokenVerifier::new(&config).expect("a verifier")
    }

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs() as i64
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).expect("a key"),
        )
        .expect("encode")
    }

    #[test]
    fn tokens_come_from_the_header_the_query_or_the_cookie() {
        let v = verifier(Some("session"));
        let token_of = |head: &str| v.token_of(&Request::from_head(head)).map(Cow::into_owned);
        assert_eq!(
            token_of("GET /x HTTP/1.1\r\nAuthorization: bearer  abc.def.ghi "),
            Some("abc.def.ghi".into())
        );
        assert_eq!(
            token_of("GET /x?a=1&token=abc.d%2Ee HTTP/1.1"),
            Some("abc.d.e".into())
        );
        assert_eq!(
            token_of("GET /x HTTP/1.1\r\nCookie: theme=dark; session=t.o.k"),
            Some("t.o.k".into())
        );
        // The header wins over the query, which wins over the cookie.
        assert_eq!(
            token_of("GET /x?token=q HTTP/1.1\r\nAuthorization: Bearer h\r\nCookie: session=c"),
            Some("h".into())
        );
        assert_eq!(
            token_of("GET /x HTTP/1.1\r\nAuthorization: Basic dXNlcg=="),
            None
        );
        assert_eq!(token_of("GET /x?tokens=no HTTP/1.1"), None);
        assert!(
            verifier(None)
                .token_of(&Request::from_head("GET / HTTP/1.1\r\nCookie: session=c"))
                .is_none()
        );
        assert!(v.where_tokens_go().contains("`session` cookie"));
    }

    #[test]
    fn tokens_are_checked_and_every_problem_named() {
        let v = verifier(None);
        let good = json(now() + 60, None);
        let grants = v.verify(&token(good, SECRET)).expect("a good token");
        assert_eq!(grants.subject.as_deref(), Some("alice"));
        assert!(grants.may_subscribe("prices.eur") && !grants.may_subscribe("chat"));
        assert!(grants.may_publish("chat.alice"));
        // Within the leeway an expired token still passes; past it, it does not.
        assert!(v.verify(&token(json(now() - 2, None), SECRET)).is_ok());
        let err = |t: String| v.verify(&t).expect_err("refused");
        assert_eq!(err(token(json(now() - 60, None), SECRET)), "token expired");
        assert!(err(token(json(now() + 60, Some(now() + 60)), SECRET)).contains("not valid yet"));
        assert!(err(token(json(now() + 60, None), "another secret")).contains("bad signature"));
        assert_eq!(
            err(token(serde_json::json!({"sub": "x"}), SECRET)),
            "token has no `exp` claim"
        );
        assert_eq!(err("not a token".into()), "malformed token");
        let bad_claim = serde_json::json!({"exp": now() + 60, "subscribe": "news"});
        assert!(err(token(bad_claim, SECRET)).contains("malformed claims"));
        let bad_pattern = serde_json::json!({"exp": now() + 60, "subscribe": ["a*b"]});
        assert!(err(token(bad_pattern, SECRET)).contains("claim `subscribe`"));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let mut config = JwtConfig::new(JwtKey::Secret(Secret::Value(SECRET.into())));
        config.audience = Some("ringws".into());
        config.issuer = Some("https://auth.example".into());
        let v = TokenVerifier::new(&config).expect("a verifier");
        let exp = now() + 60;
        let good = serde_json::json!({"exp": exp, "aud": "ringws", "iss": "https://auth.example"});
        assert!(v.verify(&token(good, SECRET)).is_ok());
        let other = serde_json::json!({"exp": exp, "aud": "other", "iss": "https://auth.example"});
        assert!(
            v.verify(&token(other, SECRET))
                .expect_err("refused")
                .contains("audience")
        );
        let none = serde_json::json!({"exp": exp, "iss": "https://auth.example"});
        assert_eq!(
            v.verify(&token(none, SECRET)).expect_err("refused"),
            "token has no `aud` claim"
        );
        // Without an audience configured, a token that names one is still accepted.
        let plain = verifier(None);
        let named = serde_json::json!({"exp": exp, "aud": "anyone"});
        assert!(plain.verify(&token(named, SECRET)).is_ok());
    }

    #[test]
    fn keys_that_cannot_work_are_refused_at_startup() {
        let empty = JwtConfig::new(JwtKey::Secret(Secret::Value("  \n".into())));
        assert!(
            TokenVerifier::new(&empty)
                .err()
                .expect("refused")
                .contains("empty")
        );
        let missing = JwtConfig::new(JwtKey::PublicKey("/nonexistent/key.pem".into()));
        assert!(
            TokenVerifier::new(&missing)
                .err()
                .expect("refused")
                .contains("cannot read")
        );
    }

    fn json(exp: i64, nbf: Option<i64>) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "sub": "alice",
            "exp": exp,
            "subscribe": ["prices.*", "news"],
            "publish": ["chat.alice"],
        });
        if let Some(nbf) = nbf {
            claims["nbf"] = nbf.into();
        }
        claims
    }
}
