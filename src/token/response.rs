//! Reading the answer of `POST /access/get_token`: a token, or an error of the right kind.
//! Pure functions over status, headers and body, so every answer shape is unit tested.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Kind, scrub};

/// The most of a `get_token` answer that is read; anything longer is malformed.
pub(crate) const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest `Retry-After` obeyed; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A token as Lengow handed it out; serialized only to be sealed in a fleet's store.
#[derive(PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenAnswer {
    pub(crate) token: String,
    pub(crate) account_id: u64,
    pub(crate) user_id: Option<u64>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("token", &super::Redacted)
            .field("account_id", &self.account_id)
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// Turns a `get_token` answer into a token or an error. `secrets` are scrubbed from any
/// server message kept in the error; `now` resolves an HTTP-date `Retry-After`.
pub(crate) fn parse(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    secrets: &[&str],
    now: SystemTime,
) -> Result<TokenAnswer, Error> {
    let kind = match status {
        StatusCode::OK | StatusCode::CREATED => return parse_token(body),
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Kind::InvalidCredentials { status }
        }
        StatusCode::TOO_MANY_REQUESTS => Kind::RateLimited {
            retry_after: retry_after(headers, now),
        },
        s if s.is_success() => {
            let message = format!("status {} is not a token answer", s.as_u16());
            return Err(Error::malformed(message));
        }
        s => Kind::Unavailable {
            status: Some(s),
            retry_after: if s == StatusCode::SERVICE_UNAVAILABLE {
                retry_after(headers, now)
            } else {
                None
            },
        },
    };
    Err(Error::build(kind, server_message(body, secrets), None))
}

fn parse_token(body: &Bytes) -> Result<TokenAnswer, Error> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::malformed(format!("the answer is not JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(Error::malformed("the answer is not a JSON object"));
    };
    let token = match map.get("token") {
        Some(Value::String(t)) => t.trim(),
        Some(_) => return Err(Error::malformed("`token` is not a string")),
        None => return Err(Error::malformed("the answer has no `token`")),
    };
    if token.is_empty() {
        return Err(Error::malformed("`token` is empty"));
    }
    if token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::malformed(
            "`token` is not usable in an Authorization header",
        ));
    }
    let account_id = match map.get("account_id") {
        Some(v) => as_id(v).ok_or_else(|| Error::malformed("`account_id` is not a number"))?,
        None => return Err(Error::malformed("the answer has no `account_id`")),
    };
    let user_id = map.get("user_id").and_then(as_id);
    Ok(TokenAnswer {
        token: token.to_owned(),
        account_id,
        user_id,
    })
}

/// A number, or a string holding one, as Lengow sends ids both ways.
fn as_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The server's own words from any of Lengow's error shapes, scrubbed.
fn server_message(body: &Bytes, secrets: &[&str]) -> Option<String> {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => {
            let error = map.get("error");
            let picked = error
                .and_then(|e| e.get("message"))
                .or(error)
                .or_else(|| map.get("detail"))
                .or_else(|| map.get("message"));
            match picked {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => Value::Object(map).to_string(),
            }
        }
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let text = text.trim();
    (!text.is_empty()).then(|| scrub(text, secrets))
}

/// `Retry-After` as seconds or as an HTTP date, capped at an hour.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ok(body: &str) -> Result<TokenAnswer, Error> {
        parse(
            StatusCode::OK,
            &HeaderMap::new(),
            &Bytes::from(body.to_owned()),
            &[],
            SystemTime::now(),
        )
    }

    #[test]
    fn parses_number_and_string_account_ids() {
        let a = ok(r#"{"token":"abc-123","account_id":42,"user_id":7}"#).unwrap();
        assert_eq!(
            (a.token.as_str(), a.account_id, a.user_id),
            ("abc-123", 42, Some(7))
        );
        let b = ok(r#"{"token":"abc","account_id":"42"}"#).unwrap();
        assert_eq!((b.account_id, b.user_id), (42, None));
    }

    #[test]
    fn created_is_a_success_too() {
        let a = parse(
            StatusCode::CREATED,
            &HeaderMap::new(),
            &Bytes::from_static(br#"{"token":"t","account_id":1}"#),
            &[],
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(a.account_id, 1);
    }

    #[test]
    fn malformed_answers_are_malformed() {
        for body in [
            "not json",
            "[1,2]",
            r#"{"account_id":1}"#,
            r#"{"token":"","account_id":1}"#,
            r#"{"token":"a b","account_id":1}"#,
            r#"{"token":"bad\nvalue","account_id":1}"#,
            r#"{"token":12,"account_id":1}"#,
            r#"{"token":"t"}"#,
            r#"{"token":"t","account_id":"x1"}"#,
            r#"{"token":"t","account_id":-1}"#,
            r#"{"detail":"Not found"}"#,
        ] {
            let e = ok(body).unwrap_err();
            assert!(e.is_malformed_response(), "{body}: {e}");
        }
    }

    #[test]
    fn error_statuses_map_to_kinds() {
        let body = Bytes::from_static(br#"{"error":{"code":401,"message":"Invalid credentials"}}"#);
        let now = SystemTime::now();
        for status in [400, 401, 403] {
            let e = parse(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                &body,
                &[],
                now,
            )
            .unwrap_err();
            assert!(e.is_invalid_credentials());
            assert_eq!(e.server_message(), Some("Invalid credentials"));
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let e = parse(StatusCode::TOO_MANY_REQUESTS, &headers, &body, &[], now).unwrap_err();
        assert!(e.is_rate_limited());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        let e = parse(StatusCode::SERVICE_UNAVAILABLE, &headers, &body, &[], now).unwrap_err();
        assert!(e.is_unavailable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        for status in [500, 502, 530, 540] {
            let e = parse(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                &Bytes::from_static(b"{\"detail\": \"down\"}"),
                &[],
                now,
            )
            .unwrap_err();
            assert!(e.is_unavailable(), "{status}");
            assert_eq!(e.status().map(|s| s.as_u16()), Some(status));
            assert_eq!(e.server_message(), Some("down"));
        }
    }

    #[test]
    fn retry_after_reads_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("99999999"));
        assert_eq!(retry_after(&headers, now), Some(MAX_RETRY_AFTER));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn server_messages_are_scrubbed() {
        let body = Bytes::from_static(
            br#"{"error":{"code":403,"message":"Token: 0a1b2c3d-0000-4abc-8def-0123456789ab is expired for hunter22"}}"#,
        );
        let e = parse(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            &body,
            &["hunter22"],
            SystemTime::now(),
        )
        .unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains("0a1b2c3d"), "{text}");
        assert!(!text.contains("hunter22"), "{text}");
    }

    proptest::proptest! {
        #[test]
        fn any_answer_parses_or_fails_cleanly(
            status in 100u16..600,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let body = Bytes::from(body);
            if let Err(e) = parse(status, &HeaderMap::new(), &body, &["s3cret"], SystemTime::now()) {
                // Every failure is one of the documented kinds, with a message.
                proptest::prop_assert!(
                    e.is_malformed_response() || e.is_unavailable() || e.is_invalid_credentials()
                        || e.is_rate_limited()
                );
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn well_formed_answers_round_trip(
            token in "[!-~&&[^\"\\\\]]{1,80}",
            account_id in proptest::prelude::any::<u64>(),
            as_string in proptest::prelude::any::<bool>(),
            user_id in proptest::option::of(proptest::prelude::any::<u32>()),
        ) {
            let account = if as_string { format!("\"{account_id}\"") } else { account_id.to_string() };
            let user = user_id.map(|u| format!(",\"user_id\":{u}")).unwrap_or_default();
            let body = format!("{{\"token\":\"{token}\",\"account_id\":{account}{user}}}");
            let answer = ok(&body).unwrap();
            proptest::prop_assert_eq!(answer.token, token);
            proptest::prop_assert_eq!(answer.account_id, account_id);
            proptest::prop_assert_eq!(answer.user_id, user_id.map(u64::from));
        }
    }
}
