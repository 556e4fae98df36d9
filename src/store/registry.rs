//! Fetching an image's documents and blobs from a registry with oci-client's per-blob calls.
//!
//! `Client::pull` is not used: it buffers every layer in memory and knows no zstd. Here every
//! manifest, config and layer is fetched on its own, its digest and size checked, and layers are
//! streamed to the unpacking thread as they arrive. Transient failures (refused connections,
//! timeouts, 5xx, 429) are tried again with exponential backoff; a 4xx or a digest mismatch never.

use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use tokio::sync::mpsc;

use super::digest::Digest;
use super::error::PullError;
use super::manifest::{Descriptor, MANIFEST_TYPES, MAX_DOCUMENT};

/// How many times a transient failure is tried in all, and the first wait between tries.
pub(super) const ATTEMPTS: u32 = 4;
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// How long connecting to a registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a registry may send nothing (no header, no byte of a body) before the request
/// fails as timed out; a slow transfer that keeps sending is never cut.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// [`IDLE_TIMEOUT`], or `MSB_REGISTRY_TIMEOUT` seconds when that is set to a positive number.
pub(super) fn idle_timeout() -> Duration {
    let Ok(value) = std::env::var(crate::env::MSB_REGISTRY_TIMEOUT) else { return IDLE_TIMEOUT };
    match value.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Duration::from_secs_f64(seconds),
        _ => {
            tracing::warn!(%value, "MSB_REGISTRY_TIMEOUT is not a positive number of seconds; using {}", IDLE_TIMEOUT.as_secs());
            IDLE_TIMEOUT
        }
    }
}

/// One registry repository, with a client set up for it (protocol, credentials).
pub(super) struct Registry {
    pub(super) client: oci_client::Client,
    pub(super) reference: Reference,
    pub(super) auth: RegistryAuth,
    /// The image as the user named it, for messages.
    pub(super) image: String,
}

impl Registry {
    pub(super) async fn connect(reference: &Reference, image: &str) -> Result<Registry, PullError> {
        Self::connect_for(reference, image, false).await
    }

    /// A client for pulls, or (`push`) for pushes: credentials asked for both scopes, and blobs
    /// sent in one PUT each (msb knows every size beforehand).
    pub(super) async fn connect_for(reference: &Reference, image: &str, push: bool) -> Result<Registry, PullError> {
        // oci-client is built without a crypto provider (ring builds in a fraction of aws-lc's
        // time); it must be installed before the first client. A second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let host = reference.resolve_registry().to_owned();
        let protocol = if plain_http_allowed(&host) {
            ClientProtocol::HttpsExcept(vec![host.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(idle_timeout()),
            user_agent: concat!("msb/", env!("CARGO_PKG_VERSION")),
            use_monolithic_push: push,
            ..ClientConfig::default()
        };
        let insecure = matches!(config.protocol, ClientProtocol::HttpsExcept(_));
        let client = oci_client::Client::new(config);
        let auth = auth::credentials(reference, insecure, push).await?;
        Ok(Registry { client, reference: reference.clone(), auth, image: image.to_owned() })
    }

    /// The manifest (or index) the reference names, and its digest.
    pub(super) async fn top(&self) -> Result<(Vec<u8>, Digest), PullError> {
        let (bytes, _) = retry(|| self.client.pull_manifest_raw(&self.reference, &self.auth, MANIFEST_TYPES), |e| self.error(e)).await?;
        let digest = Digest::of(&bytes);
        if let Some(wanted) = self.reference.digest()
            && wanted != digest.to_string() {
                return Err(self.verify_error("manifest", wanted, format!("its content has digest {digest}")));
            }
        Ok((bytes.to_vec(), digest))
    }

    /// A manifest named by an index entry, checked against the entry.
    pub(super) async fn manifest(&self, desc: &Descriptor) -> Result<Vec<u8>, PullError> {
        let by_digest = self.reference.clone_with_digest(desc.digest.to_string());
        let (bytes, _) = retry(|| self.client.pull_manifest_raw(&by_digest, &self.auth, MANIFEST_TYPES), |e| self.error(e)).await?;
        check_document(&self.image, "manifest", desc, &bytes)?;
        Ok(bytes.to_vec())
    }

    /// A small blob (the config), read whole into memory and checked.
    pub(super) async fn blob(&self, desc: &Descriptor) -> Result<Vec<u8>, PullError> {
        if desc.size > MAX_DOCUMENT {
            return Err(self.verify_error("config", &desc.digest.to_string(), format!("it is {} bytes, more than msb reads", desc.size)));
        }
        let layer = oci_descriptor(desc);
        retry(
            || async {
                let mut stream = self.client.pull_blob_stream(&self.reference, &layer).await?;
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.next().await {
                    bytes.extend_from_slice(&chunk?);
                    if bytes.len() as u64 > desc.size {
                        break;
                    }
                }
                Ok(bytes)
            },
            |e| self.error(e),
        )
        .await
        .and_then(|bytes| {
            check_document(&self.image, "config", desc, &bytes)?;
            Ok(bytes)
        })
    }

    /// Starts streaming a layer blob. The bytes arrive through the returned reader, meant for a
    /// blocking thread; a failure of the network side is kept in the stream's `failure` slot.
    pub(super) async fn layer(&self, desc: &Descriptor) -> Result<LayerStream, PullError> {
        let layer = oci_descriptor(desc);
        let mut sized = retry(|| self.client.pull_blob_stream(&self.reference, &layer), |e| self.error(e)).await?;
        if let Some(length) = sized.content_length
            && length != desc.size {
                return Err(self.verify_error(
                    "layer",
                    &desc.digest.to_string(),
                    format!("the registry sends {length} bytes, the manifest says {}", desc.size),
                ));
            }
        let (sender, receiver) = mpsc::channel::<io::Result<Bytes>>(32);
        let failure: Arc<Mutex<Option<PullError>>> = Arc::default();
        let slot = failure.clone();
        let image = self.image.clone();
        let registry = self.reference.resolve_registry().to_owned();
        let digest = desc.digest.to_string();
        let task = tokio::spawn(async move {
            while let Some(chunk) = sized.stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        if sender.send(Ok(bytes)).await.is_err() {
                            return; // the reader gave up (the unpack failed)
                        }
                    }
                    Err(err) => {
                        let message = err.to_string();
                        let error = match digest_error(&err) {
                            Some(DigestError::VerificationError { actual, .. }) => {
                                PullError::Verify { image, what: "layer", digest, reason: format!("its content has digest {actual}") }
                            }
                            Some(other) => PullError::Verify { image, what: "layer", digest, reason: other.to_string() },
                            None => PullError::Registry {
                                image,
                                registry,
                                reason: format!("layer {digest}: {}", if timed_out(&err) { silence() } else { error_chain(&err) }),
                                transient: true,
                            },
                        };
                        if let Ok(mut slot) = slot.lock() {
                            *slot = Some(error);
                        }
                        let _ = sender.send(Err(io::Error::other(message))).await;
                        return;
                    }
                }
            }
        });
        Ok(LayerStream { reader: Box::new(ChannelReader { receiver, current: Bytes::new() }), failure, task })
    }

    fn error(&self, err: OciDistributionError) -> PullError {
        registry_error(&self.image, self.reference.resolve_registry(), err)
    }

    fn verify_error(&self, what: &'static str, digest: &str, reason: String) -> PullError {
        PullError::Verify { image: self.image.clone(), what, digest: digest.to_owned(), reason }
    }
}

/// A layer blob on its way from the network to a blocking reader.
pub(super) struct LayerStream {
    pub(super) reader: Box<dyn Read + Send>,
    pub(super) failure: Arc<Mutex<Option<PullError>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// Reads the chunks the network task sends, blocking: it runs on the unpacking thread.
struct ChannelReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

fn oci_descriptor(desc: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: desc.media_type.clone(),
        digest: desc.digest.to_string(),
        size: i64::try_from(desc.size).unwrap_or(i64::MAX),
        urls: (!desc.urls.is_empty()).then(|| desc.urls.clone()),
        annotations: None,
        artifact_type: None,
    }
}

/// Checks a document fetched whole against its descriptor.
pub(super) fn check_document(image: &str, what: &'static str, desc: &Descriptor, bytes: &[u8]) -> Result<(), PullError> {
    let error = |reason| PullError::Verify { image: image.to_owned(), what, digest: desc.digest.to_string(), reason };
    if bytes.len() as u64 != desc.size {
        return Err(error(format!("it is {} bytes or more, the descriptor says {}", bytes.len(), desc.size)));
    }
    let digest = Digest::of(bytes);
    if digest != desc.digest {
        return Err(error(format!("its content has digest {digest}")));
    }
    Ok(())
}

/// Runs `op` until it succeeds, fails for good, or has been tried [`ATTEMPTS`] times.
pub(super) async fn retry<T, F, Fut>(mut op: F, to_error: impl Fn(OciDistributionError) -> PullError) -> Result<T, PullError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, OciDistributionError>>,
{
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match op().await.map_err(&to_error) {
            Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                tracing::debug!(%err, attempt, "trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// An oci-client error as a sentence, flagged transient when trying again may help.
pub(super) fn registry_error(image: &str, registry: &str, err: OciDistributionError) -> PullError {
    let (reason, transient) = match &err {
        OciDistributionError::RequestError(e) if timed_out(e) => (silence(), true),
        OciDistributionError::RequestError(e) => (error_chain(e), e.is_connect() || e.is_request() || e.is_body()),
        OciDistributionError::IoError(e) if timed_out(e) => (silence(), true),
        OciDistributionError::IoError(e) => (error_chain(e), true),
        OciDistributionError::ServerError { code, message, .. } => {
            let message = message.trim();
            let reason = if message.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {message}") };
            (reason, *code >= 500 || *code == 429)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let reasons: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| match &e.code {
                    OciErrorCode::ManifestUnknown => "the manifest is unknown: no such image or tag".to_owned(),
                    OciErrorCode::NameUnknown => "the repository is unknown".to_owned(),
                    OciErrorCode::BlobUnknown => "a blob of the image is unknown".to_owned(),
                    _ => format!("{:?}: {}", e.code, e.message),
                })
                .collect();
            let transient = envelope.errors.iter().any(|e| e.code == OciErrorCode::Toomanyrequests);
            (reasons.join("; "), transient)
        }
        OciDistributionError::UnauthorizedError { .. } => {
            (format!("not authorized (log in with `docker login {registry}`, or check the repository name)"), false)
        }
        OciDistributionError::AuthenticationFailure(reason) => (format!("authentication failed: {reason}"), false),
        OciDistributionError::DigestError(e) => {
            return PullError::Verify { image: image.to_owned(), what: "manifest", digest: String::new(), reason: e.to_string() };
        }
        other => (other.to_string(), false),
    };
    PullError::Registry { image: image.to_owned(), registry: registry.to_owned(), reason, transient }
}

/// oci-client's verifying stream reports a digest mismatch as an `io::Error` wrapping it.
fn digest_error(err: &io::Error) -> Option<&DigestError> {
    err.get_ref().and_then(|inner| inner.downcast_ref::<DigestError>())
}

/// Whether an error, or one of its causes, is a request that waited too long for the registry.
fn timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if err.downcast_ref::<reqwest::Error>().is_some_and(reqwest::Error::is_timeout) {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            // `io::Error::source` skips the error it wraps: look at that one too.
            if io.kind() == io::ErrorKind::TimedOut || io.get_ref().is_some_and(|inner| timed_out(inner)) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

/// What a timed-out request reports: how long msb waited and how to wait longer.
fn silence() -> String {
    format!("the registry sent nothing for {} s (MSB_REGISTRY_TIMEOUT sets how long msb waits)", idle_timeout().as_secs_f64())
}

/// An error and its causes, `: `-joined (reqwest's own message hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Plain HTTP is used for loopback registries and those listed in `MSB_INSECURE_REGISTRIES`.
fn plain_http_allowed(host_port: &str) -> bool {
    let host = split_host(host_port);
    if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
        return true;
    }
    let listed = std::env::var(crate::env::MSB_INSECURE_REGISTRIES).unwrap_or_default();
    listed.split(',').map(str::trim).filter(|s| !s.is_empty()).any(|entry| entry == host_port || entry == host)
}

/// The host of `host[:port]`, `[v6]:port` included.
fn split_host(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => host_port,
    }
}

mod auth {
    //! Credentials from the Docker config (`$DOCKER_CONFIG/config.json`, else
    //! `~/.docker/config.json`): `auths` entries (user and password, or an identity token) and
    //! credential helpers (`credHelpers`, `credsStore`). No config, or no entry for the registry,
    //! means an anonymous pull.

    use std::path::PathBuf;

    use docker_credential::{CredentialRetrievalError, DockerCredential};
    use oci_client::Reference;
    use oci_client::secrets::RegistryAuth;
    use serde::Deserialize;

    use crate::store::error::PullError;

    pub(super) async fn credentials(reference: &Reference, insecure: bool, push: bool) -> Result<RegistryAuth, PullError> {
        let registry = reference.resolve_registry().to_owned();
        let Some(path) = config_path() else { return Ok(RegistryAuth::Anonymous) };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
            Err(err) => return Err(PullError::Credentials { registry, reason: format!("cannot read `{}`: {err}", path.display()) }),
        };
        // Docker Hub's credentials are filed under its v1 URL.
        let server = if reference.registry() == "docker.io" { "https://index.docker.io/v1/".to_owned() } else { registry.clone() };
        let lookup = tokio::task::spawn_blocking(move || docker_credential::get_credential_from_reader(file, &server)).await;
        let credential = match lookup {
            Ok(result) => result,
            Err(err) => return Err(PullError::Credentials { registry, reason: err.to_string() }),
        };
        match credential {
            Ok(DockerCredential::UsernamePassword(user, password)) => Ok(RegistryAuth::Basic(user, password)),
            Ok(DockerCredential::IdentityToken(token)) => exchange(reference, &token, insecure, push).await,
            Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
            Err(CredentialRetrievalError::HelperFailure { stdout, .. }) if stdout.contains("credentials not found") => {
                Ok(RegistryAuth::Anonymous)
            }
            Err(CredentialRetrievalError::ConfigReadError) => {
                Err(PullError::Credentials { registry, reason: format!("`{}` is not a valid Docker config", path.display()) })
            }
            Err(err) => Err(PullError::Credentials { registry, reason: err.to_string() }),
        }
    }

    fn config_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(crate::env::DOCKER_CONFIG).filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os(crate::env::HOME).map(|home| PathBuf::from(home).join(".docker/config.json"))
    }

    #[derive(Deserialize)]
    struct TokenResponse {
        access_token: Option<String>,
        token: Option<String>,
    }

    /// An identity token is an OAuth2 refresh token: it is exchanged at the registry's token
    /// endpoint (named by the `/v2/` challenge) for an access token, as Docker does.
    async fn exchange(reference: &Reference, refresh_token: &str, insecure: bool, push: bool) -> Result<RegistryAuth, PullError> {
        let registry = reference.resolve_registry().to_owned();
        let error = |reason: String| PullError::Credentials { registry: registry.clone(), reason };
        let scheme = if insecure { "http" } else { "https" };
        // The same limits as the registry client's: a stalled token endpoint must not hang msb.
        let client = reqwest::Client::builder()
            .connect_timeout(super::CONNECT_TIMEOUT)
            .read_timeout(super::idle_timeout())
            .build()
            .map_err(|e| error(format!("cannot set up an HTTP client: {e}")))?;
        let challenge = client
            .get(format!("{scheme}://{registry}/v2/"))
            .send()
            .await
            .map_err(|e| error(format!("cannot reach the registry: {}", if super::timed_out(&e) { super::silence() } else { e.to_string() })))?;
        let header = challenge
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default();
        let Some(params) = parse_bearer_challenge(&header) else {
            return Err(error("the docker config holds an identity token, but the registry asks for no bearer token".into()));
        };
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).unwrap_or_default();
        let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone()).unwrap_or_default();
        let actions = if push { "pull,push" } else { "pull" };
        let scope = format!("repository:{}:{actions}", reference.repository());
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("service", &service),
            ("scope", &scope),
            ("client_id", "msb"),
        ];
        let response = client
            .post(&realm)
            .form(&form)
            .send()
            .await
            .map_err(|e| error(format!("the token request failed: {}", if super::timed_out(&e) { super::silence() } else { e.to_string() })))?;
        if !response.status().is_success() {
            return Err(error(format!("the token endpoint answered {}", response.status())));
        }
        let token: TokenResponse = response.json().await.map_err(|e| error(format!("the token endpoint's answer is malformed: {e}")))?;
        match token.access_token.or(token.token) {
            Some(access) => Ok(RegistryAuth::Bearer(access)),
            None => Err(error("the token endpoint gave no token".into())),
        }
    }

    /// `Bearer realm="https://auth",service="registry",scope="…"` → its parameters.
    pub(super) fn parse_bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
        let rest = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))?;
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if key.is_empty() {
                break;
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                value = chars.by_ref().take_while(|c| *c != ',').collect();
            }
            params.push((key.trim().to_lowercase(), value));
        }
        params.iter().any(|(k, _)| k == "realm").then_some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_registries() {
        for host in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.0.0.2"] {
            assert!(plain_http_allowed(host), "{host}");
        }
        for host in ["registry.example.com", "10.0.0.1:5000", "index.docker.io", "localhost.evil.com:5000"] {
            assert!(!plain_http_allowed(host), "{host}");
        }
    }

    #[test]
    fn bearer_challenges_parse() {
        let params = auth::parse_bearer_challenge(r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#)
            .expect("a bearer challenge");
        assert_eq!(params[0], ("realm".into(), "https://auth.example.com/token".into()));
        assert_eq!(params[1], ("service".into(), "registry.example.com".into()));
        assert!(auth::parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(auth::parse_bearer_challenge("Bearer service=x").is_none());
    }

    #[test]
    fn errors_are_classified() {
        let server = |code| OciDistributionError::ServerError { code, url: String::new(), message: String::new() };
        assert!(registry_error("i", "r", server(503)).is_transient());
        assert!(registry_error("i", "r", server(429)).is_transient());
        assert!(!registry_error("i", "r", server(404)).is_transient());
        assert!(!registry_error("i", "r", OciDistributionError::UnauthorizedError { url: String::new() }).is_transient());
        let digest = OciDistributionError::DigestError(DigestError::VerificationError { expected: "a".into(), actual: "b".into() });
        assert!(!registry_error("i", "r", digest).is_transient());
    }
}
