//! Signed JSON calls to AWS control-plane APIs (Lambda's event source mappings, EventBridge's
//! rules): the handful the idle pause makes. Their SDK crates would add about half a megabyte
//! to each function for three operations; the credentials, region and endpoint are the SDK
//! configuration's, and the request is signed with the SDK's own SigV4 signer.

use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde_json::Value;

use crate::ports::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{service} {operation} failed: {code} (HTTP {status}): {message}")]
    Refused {
        service: &'static str,
        operation: String,
        status: u16,
        /// The AWS error code (`ResourceInUseException`, `AccessDeniedException`, ...).
        code: String,
        message: String,
    },
    #[error("{service} {operation} could not be sent")]
    Transport {
        service: &'static str,
        operation: String,
        #[source]
        source: BoxError,
    },
}

impl ControlError {
    /// The AWS error code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ControlError::Refused { code, .. } => Some(code),
            ControlError::Transport { .. } => None,
        }
    }
}

/// A client for the JSON control-plane APIs of one account and region.
#[derive(Clone)]
pub struct ControlPlane {
    /// Built at the first call: a client loads its TLS roots, milliseconds of a cold start
    /// that most invocations never need.
    http: std::sync::OnceLock<reqwest::Client>,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    region: String,
    /// The SDK configuration's endpoint override (a stand-in), used for every service.
    endpoint: Option<String>,
}

/// One call: the service's signing name and API, the method, the path and query, the
/// `X-Amz-Target` of a JSON 1.1 API, and the JSON body.
pub struct Call<'a> {
    pub service: &'static str,
    pub operation: &'a str,
    pub method: reqwest::Method,
    pub path: &'a str,
    pub target: Option<&'a str>,
    pub body: Option<Value>,
}

impl ControlPlane {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        ControlPlane {
            http: std::sync::OnceLock::new(),
            credentials: config.credentials_provider(),
            region: config
                .region()
                .map_or_else(|| "us-east-1".to_owned(), |r| r.as_ref().to_owned()),
            endpoint: config
                .endpoint_url()
                .map(|e| e.trim_end_matches('/').to_owned()),
        }
    }

    /// Sends a signed call and returns its JSON answer (`Null` when empty).
    pub async fn call(&self, call: Call<'_>) -> Result<Value, ControlError> {
        let transport = |source: BoxError| ControlError::Transport {
            service: call.service,
            operation: call.operation.to_owned(),
            source,
        };
        let base = self
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.{}.amazonaws.com", call.service, self.region));
        let url = format!("{base}{}", call.path);
        let body = match &call.body {
            Some(v) => serde_json::to_vec(v).map_err(|e| transport(Box::new(e)))?,
            None => Vec::new(),
        };
        let content_type = if call.target.is_some() {
            "application/x-amz-json-1.1"
        } else {
            "application/json"
        };
        // The signer takes the host (and a port) from the URL.
        let mut headers: Vec<(&str, &str)> = vec![("content-type", content_type)];
        if let Some(target) = call.target {
            headers.push(("x-amz-target", target));
        }
        let credentials = match &self.credentials {
            Some(p) => p
                .provide_credentials()
                .await
                .map_err(|e| transport(Box::new(e)))?,
            None => return Err(transport("no AWS credentials".into())),
        };
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(call.service)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| transport(Box::new(e)))?
            .into();
        let signable = SignableRequest::new(
            call.method.as_str(),
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| transport(Box::new(e)))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| transport(Box::new(e)))?
            .into_parts();
        let mut request = self
            .http
            .get_or_init(reqwest::Client::new)
            .request(call.method.clone(), &url);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        for (name, value) in instructions.headers() {
            request = request.header(name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| transport(Box::new(e)))?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| transport(Box::new(e)))?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(ControlError::Refused {
            service: call.service,
            operation: call.operation.to_owned(),
            status: status.as_u16(),
            code: error_code(error_type.as_deref(), &json),
            message: ["message", "Message"]
                .iter()
                .find_map(|k| json.get(k).and_then(Value::as_str))
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// The error code: the `X-Amzn-ErrorType` header (`Code:uri`), else the body's `__type`
/// (`prefix#Code`) or `Type`.
fn error_code(header: Option<&str>, body: &Value) -> String {
    let raw = header
        .map(str::to_owned)
        .or_else(|| {
            ["__type", "Type", "code"]
                .iter()
                .find_map(|k| body.get(k).and_then(Value::as_str).map(str::to_owned))
        })
        .unwrap_or_default();
    let code = raw.split(':').next().unwrap_or_default();
    code.rsplit('#').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_from_header_or_body() {
        assert_eq!(
            error_code(
                Some(
                    "ResourceInUseException:http://internal.amazon.com/coral/com.amazonaws.awsgirlservice/"
                ),
                &Value::Null
            ),
            "ResourceInUseException"
        );
        assert_eq!(
            error_code(
                None,
                &serde_json::json!({"__type": "com.amazonaws.events#ResourceNotFoundException"})
            ),
            "ResourceNotFoundException"
        );
        assert_eq!(
            error_code(None, &serde_json::json!({"Type": "User"})),
            "User"
        );
        assert_eq!(error_code(None, &Value::Null), "");
    }
}
