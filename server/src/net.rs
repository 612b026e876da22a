//! How every process talks gRPC the same way: TLS and mutual TLS on servers and clients,
//! the admin bearer token, and server reflection.
//!
//! Security model. With `--tls-cert/--tls-key` a server speaks TLS; adding `--tls-ca` makes it
//! demand a client certificate signed by that CA (mutual TLS), so only holders of a cluster
//! certificate can reach any service, including the participant's Prepare/Commit/Abort. On top
//! of that, the operator services (coordinator `Admin`, participant `ParticipantAdmin`, and
//! `Failpoints` on both) require `authorization: Bearer TOKEN` when a token is configured,
//! because they can force outcomes that break atomicity.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use subtle::ConstantTimeEq;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

/// Most calls one client connection may have open at once on a server (HTTP/2 streams);
/// further calls wait on the client side. Bounds the work one connection can pile up.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Calls a client may cancel (RST_STREAM) while they still wait for the server to take them
/// up, per connection, before the server takes it for a reset flood and closes the connection
/// (GOAWAY, ENHANCE_YOUR_CALM "too_many_resets"), failing every other call on it. HTTP/2's
/// default, 20, is met by an honest client whose burst of short-deadline calls expires
/// together under load. A cancelled call that was never taken up costs the server only its
/// place in the accept queue, so allowing as many as a connection may have calls open keeps
/// the flood guard's bound (a connection cannot queue more) while sparing such clients.
pub const MAX_PENDING_ACCEPT_RESETS: usize = MAX_CONCURRENT_STREAMS as usize;
/// Streams the server may itself reset because the client broke the protocol, per connection,
/// before it closes the connection: HTTP/2's default, named. A client's own cancellations do
/// not count here.
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Largest PEM file (certificate, key, CA bundle or token) a process reads.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// Longest admin token accepted; longer ones are refused at startup.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Shortest admin token accepted: a short token is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// Transport security flags, shared by `coordinator`, `participant` and `txnctl`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate this process presents: as a server, and as a client when the other
    /// side demands one (mutual TLS). Needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate. As a client: the CA that signed the servers' certificates (turns
    /// TLS on for outgoing calls). As a server: clients must present a certificate signed by
    /// it (mutual TLS).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

fn read_limited(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{flag} {}: cannot read", path.display()))?;
    if meta.len() > MAX_PEM_BYTES {
        anyhow::bail!(
            "{flag} {}: {} bytes, the limit is {MAX_PEM_BYTES}",
            path.display(),
            meta.len()
        );
    }
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read", path.display()))
}

fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_limited(flag, path)?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        anyhow::bail!("{flag} {}: not a PEM file", path.display());
    }
    Ok(bytes)
}

impl TlsArgs {
    /// True when outgoing calls use TLS.
    pub fn client_enabled(&self) -> bool {
        self.tls_ca.is_some()
    }

    /// Server TLS settings, or None for plaintext.
    pub fn server_config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        // A CA without a certificate configures the client side only.
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let identity =
            Identity::from_pem(read_pem("--tls-cert", cert)?, read_pem("--tls-key", key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_ca {
            config = config.client_ca_root(Certificate::from_pem(read_pem("--tls-ca", ca)?));
        }
        Ok(Some(config))
    }

    /// Client TLS settings, or None for plaintext.
    pub fn client_config(&self) -> anyhow::Result<Option<ClientTlsConfig>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(Identity::from_pem(
                read_pem("--tls-cert", cert)?,
                read_pem("--tls-key", key)?,
            ));
        }
        Ok(Some(config))
    }

    /// The server builder every service uses: TLS when configured, the per-connection call
    /// bound, the reset-flood guard tuned so that cancellations are not taken for an attack,
    /// and RESOURCE_EXHAUSTED for oversize messages.
    pub fn server(&self) -> anyhow::Result<crate::serve::Builder> {
        let mut builder = Server::builder();
        if let Some(tls) = self.server_config()? {
            builder = builder
                .tls_config(tls)
                .context("applying the server TLS settings")?;
        }
        Ok(builder
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .layer(SizeLimitStatus)
            .layer(crate::trace::TraceLayer))
    }
}

/// Client-side TLS, loaded once and applied to every endpoint a process dials.
#[derive(Clone, Default)]
pub struct ClientTls(Option<ClientTlsConfig>);

impl ClientTls {
    pub fn load(args: &TlsArgs) -> anyhow::Result<Self> {
        Ok(Self(args.client_config()?))
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Parses `url` into an endpoint. With TLS on, an `http://` URL is dialled as `https://`,
    /// so a cluster's addresses read the same with and without TLS.
    pub fn endpoint(
        &self,
        flag: &str,
        url: &str,
        connect_timeout: Duration,
    ) -> anyhow::Result<Endpoint> {
        let url = match (&self.0, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        };
        let mut ep = Endpoint::from_shared(url.clone())
            .with_context(|| format!("{flag} {url:?} is not a valid URL"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.0 {
            ep = ep
                .tls_config(tls.clone())
                .with_context(|| format!("{flag} {url:?}: applying the TLS settings"))?;
        }
        Ok(ep)
    }
}

/// The admin bearer token, checked by [`AdminAuth`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArgs {
    /// File holding the bearer token that operator calls (Admin, ParticipantAdmin,
    /// Failpoints) must carry. Without it (and without TXN_ADMIN_TOKEN) those calls are open
    /// to anyone who can reach the port.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The configured token: from --admin-token-file, else from TXN_ADMIN_TOKEN.
    pub fn load(&self) -> anyhow::Result<Option<String>> {
        let raw = match &self.admin_token_file {
            Some(path) => {
                let bytes = read_limited("--admin-token-file", path)?;
                String::from_utf8(bytes).map_err(|_| {
                    anyhow::anyhow!("--admin-token-file {}: not UTF-8 text", path.display())
                })?
            }
            None => match std::env::var("TXN_ADMIN_TOKEN") {
                Ok(t) => t,
                Err(_) => return Ok(None),
            },
        };
        let token = raw.trim().to_owned();
        validate_token(&token).map_err(anyhow::Error::msg)?;
        Ok(Some(token))
    }
}

/// Checks that a token can travel in an HTTP/2 header and is long enough.
pub fn validate_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN || token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "admin token: {} characters, must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("admin token: only printable ASCII without spaces is allowed".into());
    }
    Ok(())
}

/// Interceptor guarding the operator services: with a token configured, a call must carry
/// `authorization: Bearer TOKEN`. The comparison takes the same time wherever they differ.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<std::sync::Arc<str>>,
}

impl AdminAuth {
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Into::into),
        }
    }

    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(req);
        };
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "authorization: missing; this is an operator call and the service requires \
                 a bearer token (txnctl --token or TXNCTL_TOKEN)",
            ));
        };
        let given = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer TOKEN\""))?;
        if given.as_bytes().ct_eq(expected.as_bytes()).into() {
            Ok(req)
        } else {
            Err(Status::unauthenticated("authorization: wrong bearer token"))
        }
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req)
    }
}

/// Encoded descriptors of every txn.v1 service and message, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = txn_proto::FILE_DESCRIPTOR_SET;

/// The gRPC reflection service (v1 and v1alpha), so grpcurl and similar tools can list and
/// call the services without the .proto files.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    Ok((v1, v1alpha))
}

/// Client interceptor that adds `authorization: Bearer TOKEN` to every call when a token is
/// set (txnctl, and the coordinator's calls to the participants' admin service).
#[derive(Clone, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(Self(None)),
            Some(t) => {
                validate_token(t)?;
                let value = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "admin token: not a valid header value".to_owned())?;
                Ok(Self(Some(value)))
            }
        }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel whose calls carry the admin token.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

/// Server layer that reports a request over the message size limit as RESOURCE_EXHAUSTED
/// (tonic says OUT_OF_RANGE), the code gRPC clients expect for "too big".
#[derive(Debug, Clone, Copy, Default)]
pub struct SizeLimitStatus;

impl<S> tower::Layer<S> for SizeLimitStatus {
    type Service = SizeLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SizeLimitService(inner)
    }
}

#[derive(Debug, Clone)]
pub struct SizeLimitService<S>(S);

type Rewrite<B> = fn(http::Response<B>) -> http::Response<B>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for SizeLimitService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, Rewrite<ResBody>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use futures::TryFutureExt;
        self.0.call(req).map_ok(too_big_is_exhausted::<ResBody>)
    }
}

/// `MAX_MESSAGE_BYTES`, percent-encoded for the grpc-message header.
const MAX_MESSAGE_BYTES_TEXT: &str = "4%20MiB";
const _: () = assert!(txn_types::types::MAX_MESSAGE_BYTES == 4 * 1024 * 1024);

fn too_big_is_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers.get("grpc-message").is_some_and(|m| {
        let m = String::from_utf8_lossy(m.as_bytes()).replace("%20", " ");
        m.contains("message length too large")
    });
    if out_of_range && too_large {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from_static("8"), // RESOURCE_EXHAUSTED
        );
        let original = headers
            .get("grpc-message")
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
            .unwrap_or_default();
        // grpc-message is percent-encoded; the original already is.
        if let Ok(v) = http::HeaderValue::from_str(&format!(
            "request:%20over%20the%20message%20size%20limit%20({MAX_MESSAGE_BYTES_TEXT}):%20{original}"
        )) {
            headers.insert("grpc-message", v);
        }
    }
    resp
}
