//! HTTP plumbing shared by every step: the one client, redirects followed by hand so the bearer
//! token is dropped the moment a hop leaves its origin, `Retry-After` and backoff, and bounded
//! reads of bodies.

use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use url::Url;

use super::BearerToken;
use super::error::{ERROR_BODY_CAP, ErrorBody, SendError};

/// Redirect hops followed per request.
pub(crate) const MAX_REDIRECTS: usize = 10;
/// Shortest wait between polls or retries, whatever the server says.
pub(crate) const MIN_WAIT: Duration = Duration::from_secs(1);
/// Longest honoured `Retry-After`.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);
/// A `Retry-After` beyond this is taken for a server bug, not a plan, and replaced by backoff.
const ABSURD_WAIT: Duration = Duration::from_secs(3600);
/// Longest backoff step.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the client authenticates: a token given as it is, or SMART Backend Services client
/// credentials that get (and renew) one from the server's token endpoint.
#[derive(Clone)]
pub(crate) enum Credentials {
    Token(BearerToken),
    Smart {
        auth: shared::adapters::fhir_server::Auth,
        /// The FHIR base whose `.well-known/smart-configuration` names the token endpoint.
        base: String,
    },
}

pub(crate) struct Http {
    pub client: reqwest::Client,
    pub credentials: Option<Credentials>,
}

impl Http {
    /// The bearer token to send now, if any.
    pub async fn bearer(&self) -> Result<Option<String>, SendError> {
        match &self.credentials {
            None => Ok(None),
            Some(Credentials::Token(t)) => Ok(Some(t.secret().to_owned())),
            Some(Credentials::Smart { auth, base }) => auth
                .token(&self.client, base)
                .await
                .map_err(|e| SendError::Token(shared::error_chain(&e))),
        }
    }

    /// `bearer_auth` with the current token, when there is one.
    pub async fn authorize(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, SendError> {
        Ok(match self.bearer().await? {
            Some(t) => req.bearer_auth(t),
            None => req,
        })
    }

    pub fn new(credentials: Option<Credentials>) -> Result<Http, super::ClientError> {
        let client = reqwest::Client::builder()
            // Followed by hand in `get`: the token policy is decided per hop.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fhir-export/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Between two reads of a body, not the whole download: files can be large.
            .read_timeout(Duration::from_secs(300))
            .build()
            .map_err(super::ClientError::HttpClient)?;
        Ok(Http {
            client,
            credentials,
        })
    }

    /// `GET url`, following redirects. The token is sent only if `with_token`, and only until
    /// a hop leaves the origin of `url`. Returns the response and the URL that answered.
    pub async fn get(
        &self,
        url: &Url,
        accept: &str,
        with_token: bool,
        extra: &[(&str, &str)],
    ) -> Result<(Response, Url), SendError> {
        let (resp, at) = self.get_once(url, accept, with_token, extra).await?;
        // A token the server no longer takes (it restarted, or revoked it) is replaced once
        // when the client can get another.
        if resp.status() == StatusCode::UNAUTHORIZED
            && with_token
            && let Some(Credentials::Smart { auth, .. }) = &self.credentials
        {
            auth.invalidate().await;
            return self.get_once(url, accept, with_token, extra).await;
        }
        Ok((resp, at))
    }

    async fn get_once(
        &self,
        url: &Url,
        accept: &str,
        with_token: bool,
        extra: &[(&str, &str)],
    ) -> Result<(Response, Url), SendError> {
        let mut current = url.clone();
        let mut token = if with_token {
            self.bearer().await?
        } else {
            None
        };
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client.get(current.clone()).header(ACCEPT, accept);
            for (k, v) in extra {
                req = req.header(*k, *v);
            }
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await?;
            if !is_followed_redirect(resp.status()) {
                return Ok((resp, current));
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| current.join(l).ok())
                .filter(is_http)
                .ok_or(SendError::BadRedirect)?;
            if next.origin() != current.origin() {
                token = None;
            }
            current = next;
        }
        Err(SendError::TooManyRedirects(MAX_REDIRECTS))
    }
}

fn is_followed_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

pub(crate) fn is_http(u: &Url) -> bool {
    matches!(u.scheme(), "http" | "https") && u.host().is_some()
}

/// Reads a whole body, refusing one longer than `cap` bytes.
pub(crate) async fn read_capped(mut resp: Response, cap: usize) -> Result<Vec<u8>, CapError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(CapError::Body)? {
        if buf.len() + chunk.len() > cap {
            return Err(CapError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[derive(Debug)]
pub(crate) enum CapError {
    Body(reqwest::Error),
    TooLarge,
}

/// The error body of a response (bounded), for messages.
pub(crate) async fn error_body(resp: Response) -> ErrorBody {
    let mut buf = Vec::new();
    let mut resp = resp;
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = ERROR_BODY_CAP.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= ERROR_BODY_CAP {
            break;
        }
    }
    ErrorBody::parse(&buf)
}

/// The wait a `Retry-After` asks for, within [`MIN_WAIT`, `MAX_WAIT`]; `None` when absent,
/// unreadable, negative, or absurdly long, so that the caller backs off instead.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        // Too many digits for u64 is absurd too.
        Duration::from_secs(v.parse::<u64>().ok()?)
    } else {
        let at: SystemTime = chrono::DateTime::parse_from_rfc2822(v).ok()?.into();
        // A date in the past means "now".
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    (wait <= ABSURD_WAIT).then(|| wait.clamp(MIN_WAIT, MAX_WAIT))
}

/// Exponential backoff: 1, 2, 4 ... 30 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: MIN_WAIT }
    }

    pub fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX_BACKOFF);
        d
    }

    /// The server's `Retry-After` if usable, else the next backoff step.
    pub fn after(&mut self, headers: &HeaderMap) -> Duration {
        retry_after(headers, SystemTime::now()).unwrap_or_else(|| self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn ra(v: &str, now: SystemTime) -> Option<Duration> {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        retry_after(&h, now)
    }

    #[test]
    fn retry_after_is_clamped_or_replaced() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_400); // 2015-10-21T07:26:40Z
        let s = Duration::from_secs;
        assert_eq!(ra("5", now), Some(s(5)));
        assert_eq!(ra("0", now), Some(s(1)));
        assert_eq!(ra("120", now), Some(s(60)));
        assert_eq!(ra("3600", now), Some(s(60)));
        assert_eq!(ra("86400", now), None);
        assert_eq!(ra("999999", now), None);
        assert_eq!(ra("99999999999999999999999", now), None);
        assert_eq!(ra("-5", now), None);
        assert_eq!(ra("1.5", now), None);
        assert_eq!(ra("soon", now), None);
        assert_eq!(ra("", now), None);
        assert_eq!(ra("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(s(60)));
        assert_eq!(ra("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(s(20)));
        assert_eq!(ra("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(s(1)));
        assert_eq!(ra("Wed, 21 Oct 2015 09:28:00 GMT", now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let mut b = Backoff::new();
        let got: Vec<u64> = (0..7).map(|_| b.next().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
    }
}
