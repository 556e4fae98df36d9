//! A registry on a loopback port that serves one image the way a test asks: good, damaged
//! (wrong bytes, truncated, too long, closed early), failing (HTTP 500), stalling, or behind
//! credentials. Used by `images` (damaged blobs, auth) and `faults` (errors, retries, stalls).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msb::store::Digest;

/// A one-layer image built in the test.
#[derive(Clone)]
pub(crate) struct Image {
    config: Vec<u8>,
    pub(crate) layer: Vec<u8>,
    bad_config: Vec<u8>,
    pub(crate) escape_layer: Vec<u8>,
    pub(crate) layer_digest: Digest,
}

impl Image {
    pub(crate) fn new(content: &[u8]) -> Image {
        let tar = tar_of(&[("file.txt", content)]);
        let layer = gzip(&tar);
        let escape_tar = tar_of(&[("../escaped", b"x")]);
        let escape_layer = gzip(&escape_tar);
        let config = |diff_id: &Digest| {
            format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/file.txt"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#)
                .into_bytes()
        };
        let diff_id = Digest::of(&tar);
        let layer_digest = Digest::of(&layer);
        Image {
            config: config(&diff_id),
            bad_config: config(&Digest::of(b"another tar")),
            escape_layer,
            layer,
            layer_digest,
        }
    }

    /// The manifest for a config and a layer.
    fn manifest(config: &[u8], layer: &[u8]) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},
"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}}"#,
            Digest::of(config),
            config.len(),
            Digest::of(layer),
            layer.len()
        )
        .into_bytes()
    }
}

pub(crate) fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        // `set_path` refuses `..`; a malicious layer writes the name bytes itself.
        let bytes = name.as_bytes();
        header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(content);
        data.resize(data.len().div_ceil(512) * 512, 0);
    }
    data.resize(data.len() + 1024, 0);
    data
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

/// How the fake registry misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serve {
    Good,
    /// The layer's bytes with one flipped: same size, other digest.
    WrongBytes,
    /// Half the layer, with an honest Content-Length.
    Truncated,
    /// The layer and more, with an honest Content-Length.
    TooLong,
    /// Content-Length of the whole layer, then the connection closes halfway.
    ClosesEarly,
    /// A config whose diff_id is not the layer's.
    WrongDiffId,
    /// A layer with a `../` entry.
    Escape,
    /// Half the layer, then nothing for a minute.
    Stalls,
    /// The layer's headers, then not one byte of it for a minute.
    StallsBody,
    /// The manifest request is read, then nothing is answered for a minute.
    StallsHead,
    /// The layer in small pieces with pauses between them: slow, but never idle for long.
    Slow,
    /// HTTP 500 for every request of the layer.
    ServerError,
    /// HTTP 500 for the first request of the layer, then the layer.
    FailsOnce,
    /// Every request needs HTTP basic auth with [`USER`] and [`PASSWORD`].
    Basic,
    /// Every request needs a bearer token, got from `/token` for [`REFRESH_TOKEN`].
    Token,
    /// As `Token`, but `/token` never answers.
    TokenStalls,
}

/// A registry on a loopback port serving one image, `fake/image:tag`, the way `serve` says.
pub(crate) struct FakeRegistry {
    pub(crate) port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    pub(crate) fn start(image: Image, serve: Serve) -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let config = if serve == Serve::WrongDiffId { image.bad_config.clone() } else { image.config.clone() };
        let good_layer = if serve == Serve::Escape { image.escape_layer.clone() } else { image.layer.clone() };
        let manifest = Image::manifest(&config, &good_layer);
        let (count, halt) = (requests.clone(), stop.clone());
        let layer_hits = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let (manifest, config, layer) = (manifest.clone(), config.clone(), good_layer.clone());
                        let layer_hits = layer_hits.clone();
                        std::thread::spawn(move || answer(stream, serve, port, &manifest, &config, &layer, &layer_hits));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeRegistry { port, requests, stop }
    }

    pub(crate) fn name(&self) -> String {
        format!("127.0.0.1:{}/fake/image:tag", self.port)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The credentials the `Basic` and `Token` fake registries want.
pub(crate) const USER: &str = "msb";
pub(crate) const PASSWORD: &str = "secret";
pub(crate) const REFRESH_TOKEN: &str = "refresh-me";
const ACCESS_TOKEN: &str = "access-granted";

/// Answers one HTTP/1.1 request and closes the connection.
fn answer(stream: TcpStream, serve: Serve, port: u16, manifest: &[u8], config: &[u8], layer: &[u8], layer_hits: &AtomicUsize) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.trim().to_lowercase(), value.trim().to_owned());
                }
            }
        }
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut stream = &stream;
    let send_with = |stream: &mut &TcpStream, status: &str, extra: &str, kind: &str, length: usize, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: {kind}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };
    let send = |stream: &mut &TcpStream, status: &str, kind: &str, length: usize, body: &[u8]| {
        send_with(stream, status, "", kind, length, body);
    };
    let authorization = headers.get("authorization").cloned().unwrap_or_default();
    let (wanted, challenge) = match serve {
        Serve::Basic => {
            use base64::Engine as _;
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
            (format!("Basic {encoded}"), "WWW-Authenticate: Basic realm=\"fake\"\r\n".to_owned())
        }
        Serve::Token | Serve::TokenStalls => (
            format!("Bearer {ACCESS_TOKEN}"),
            format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\"\r\n"),
        ),
        _ => (String::new(), String::new()),
    };
    if serve == Serve::TokenStalls && path == "/token" {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    if serve == Serve::Token && path == "/token" {
        let form = String::from_utf8_lossy(&body);
        if form.contains(&format!("refresh_token={REFRESH_TOKEN}")) && form.contains("grant_type=refresh_token") {
            let token = format!(r#"{{"access_token":"{ACCESS_TOKEN}"}}"#);
            send(&mut stream, "200 OK", "application/json", token.len(), token.as_bytes());
        } else {
            send(&mut stream, "401 Unauthorized", "application/json", 2, b"{}");
        }
    } else if !wanted.is_empty() && authorization != wanted {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        send_with(&mut stream, "401 Unauthorized", &challenge, "application/json", body.len(), body);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        return;
    }
    let blob = |digest: &Digest| format!("/v2/fake/image/blobs/{digest}");
    if path == "/token" {
        // answered above
    } else if path == "/v2/" {
        send(&mut stream, "200 OK", "application/json", 2, b"{}");
    } else if path.starts_with("/v2/fake/image/manifests/") && serve == Serve::StallsHead {
        std::thread::sleep(Duration::from_secs(60));
    } else if path.starts_with("/v2/fake/image/manifests/") {
        send(&mut stream, "200 OK", "application/vnd.oci.image.manifest.v1+json", manifest.len(), manifest);
    } else if path == blob(&Digest::of(config)) {
        send(&mut stream, "200 OK", "application/octet-stream", config.len(), config);
    } else if path == blob(&Digest::of(layer)) {
        let kind = "application/octet-stream";
        match serve {
            Serve::WrongBytes => {
                let mut bad = layer.to_vec();
                let middle = bad.len() / 2;
                bad[middle] ^= 0xff;
                send(&mut stream, "200 OK", kind, bad.len(), &bad);
            }
            Serve::Truncated => send(&mut stream, "200 OK", kind, layer.len() / 2, &layer[..layer.len() / 2]),
            Serve::TooLong => {
                let long = [layer, b"trailing bytes"].concat();
                send(&mut stream, "200 OK", kind, long.len(), &long);
            }
            Serve::ClosesEarly => send(&mut stream, "200 OK", kind, layer.len(), &layer[..layer.len() / 2]),
            Serve::Stalls => {
                send(&mut stream, "200 OK", kind, layer.len(), &layer[..layer.len() / 2]);
                std::thread::sleep(Duration::from_secs(60));
            }
            Serve::StallsBody => {
                send(&mut stream, "200 OK", kind, layer.len(), b"");
                std::thread::sleep(Duration::from_secs(60));
            }
            Serve::Slow => {
                send(&mut stream, "200 OK", kind, layer.len(), b"");
                for piece in layer.chunks(layer.len().div_ceil(8)) {
                    std::thread::sleep(Duration::from_millis(150));
                    let _ = stream.write_all(piece);
                    let _ = stream.flush();
                }
            }
            Serve::ServerError => {
                let body = b"internal error";
                send(&mut stream, "500 Internal Server Error", "text/plain", body.len(), body);
            }
            Serve::FailsOnce if layer_hits.fetch_add(1, Ordering::Relaxed) == 0 => {
                let body = b"internal error";
                send(&mut stream, "500 Internal Server Error", "text/plain", body.len(), body);
            }
            Serve::Good | Serve::FailsOnce | Serve::StallsHead | Serve::WrongDiffId | Serve::Escape | Serve::Basic | Serve::Token | Serve::TokenStalls => {
                send(&mut stream, "200 OK", kind, layer.len(), layer)
            }
        }
    } else {
        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}"#;
        send(&mut stream, "404 Not Found", "application/json", body.len(), body);
    }
    // Close our side first, so a client waiting for the promised bytes sees the end at once.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}
