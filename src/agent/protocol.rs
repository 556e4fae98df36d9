//! What msb and its agent say to each other: the agent's configuration file and the exec protocol.
//!
//! A connection to the agent carries one exec. Each side first sends a [`Hello`] naming its
//! protocol version, so an agent and an msb from different builds refuse each other with a clear
//! message instead of misreading frames. The host then sends an [`ExecRequest`]; the agent answers
//! `Started`, the two stream stdin (host → guest) and stdout/stderr (guest → host) while the host
//! may resize the terminal or send signals, and the agent ends with `Exit`.
//!
//! A frame is `kind: u8`, `length: u32` (big-endian), then `length` bytes: JSON for control
//! messages, raw bytes for stdin/stdout/stderr (no encoding cost on the data path). Decoding never
//! trusts a length or a payload: an unknown kind, an oversized length, a short read or bad JSON is
//! a [`ProtocolError`], never a panic or an unbounded allocation.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Bumped on any change to the frames or their payloads.
pub const PROTOCOL_VERSION: u32 = 1;
/// The largest payload either side accepts: a bound on what a garbage length can make us allocate.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How much stdin/stdout/stderr one data frame carries at most.
pub const CHUNK: usize = 32 * 1024;

/// Where msb's files appear in every sandbox: one read-only bind of the sandbox's `guest/`
/// folder, with its `run/` bound read-write over it.
pub const GUEST_DIR: &str = "/.msb";
/// The agent itself.
pub const GUEST_AGENT: &str = "/.msb/agent";
/// The agent's configuration.
pub const GUEST_CONFIG: &str = "/.msb/config.json";
/// The sandbox's scripts; always first on `PATH`.
pub const GUEST_SCRIPTS: &str = "/.msb/scripts";
/// Where the agent listens for exec (its unix socket).
pub const GUEST_RUN: &str = "/.msb/run";

/// `/.msb/config.json`: what the agent does in one sandbox. Written by msb, read by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The main command: entrypoint followed by command, already merged with the image. Empty:
    /// the agent only serves exec until it is sent SIGTERM.
    #[serde(default)]
    pub argv: Vec<String>,
    /// `KEY=value`, for the main command and every exec. `/.msb/scripts` is put first on `PATH`
    /// whatever this says.
    #[serde(default)]
    pub env: Vec<String>,
    /// The main command's working directory, and the default for execs.
    #[serde(default = "root_dir")]
    pub workdir: String,
    /// `name`, `uid`, `uid:gid` or `name:group`, looked up in the guest's /etc/passwd and
    /// /etc/group; none is root. The default for execs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What becomes PID 1.
    #[serde(default)]
    pub init: InitMode,
    /// Where the exec server listens.
    pub listen: Listen,
    /// Set when PID 1 owns a UTS namespace (ignored where the runtime already set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

fn root_dir() -> String {
    "/".into()
}

/// What becomes PID 1. The host resolves `init = "auto"` to a path before boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// The agent stays PID 1 and runs `argv` as the main command.
    #[default]
    Agent,
    /// The agent sets up, starts its exec server in the background, and execs this init as PID 1.
    /// When `argv[0]` is this path, the rest of `argv` are the init's arguments.
    Path(String),
}

/// The exec server's socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listen {
    /// A unix socket, e.g. `/.msb/run/agent.sock` (the host binds `/.msb/run` from its own folder).
    Unix(String),
    /// A vsock port (krun maps it to a unix socket on the host).
    Vsock(u32),
}

/// One command to run in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Looked up on `PATH` (scripts first) when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=value`, over the sandbox's env.
    #[serde(default)]
    pub env: Vec<String>,
    /// Defaults to the sandbox's workdir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Defaults to the sandbox's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// A pseudo-terminal of this size (stdout and stderr are then one stream); none: pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<WindowSize>,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// The first frame each side sends. Its shape never changes, so versions can always compare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Who is talking, for messages: `msb 0.1.0`, `msb-agent 0.1.0`.
    pub software: String,
}

impl Hello {
    /// This build's hello, as `software` (`msb` or `msb-agent`).
    pub fn new(software: &str) -> Hello {
        Hello { protocol: PROTOCOL_VERSION, software: format!("{software} {}", env!("CARGO_PKG_VERSION")) }
    }
}

/// How an exec (or the main command) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Exit {
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// Why the agent refused or could not run an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub message: String,
    /// The exit code a shell would give (127: not found, 126: cannot run), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    /// Host → guest, once, after the hellos.
    Exec(ExecRequest),
    /// Guest → host: the command runs, as this guest pid.
    Started { pid: i32 },
    /// Host → guest; an empty payload closes the command's stdin.
    Stdin(Vec<u8>),
    /// Guest → host; with a tty, everything the terminal shows.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Host → guest: the terminal was resized.
    Resize(WindowSize),
    /// Host → guest: deliver this signal to the command's process group.
    Signal(i32),
    /// Guest → host, last.
    Exit(Exit),
    /// Guest → host, last: the exec could not be run (or the hellos did not match).
    Error(Failure),
}

/// The kind byte of each frame. Values are part of the protocol: never reuse one.
mod kind {
    pub(super) const HELLO: u8 = 1;
    pub(super) const EXEC: u8 = 2;
    pub(super) const STARTED: u8 = 3;
    pub(super) const STDIN: u8 = 4;
    pub(super) const STDOUT: u8 = 5;
    pub(super) const STDERR: u8 = 6;
    pub(super) const RESIZE: u8 = 7;
    pub(super) const SIGNAL: u8 = 8;
    pub(super) const EXIT: u8 = 9;
    pub(super) const ERROR: u8 = 10;
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PidPayload {
    pid: i32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalPayload {
    signal: i32,
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the connection ended in the middle of a frame")]
    Truncated,
    #[error("a frame of kind {kind} announces {length} bytes, more than the {MAX_PAYLOAD} allowed")]
    TooLarge { kind: u8, length: u32 },
    #[error("unknown frame kind {0}: the other side does not speak this protocol")]
    UnknownKind(u8),
    #[error("a malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Exec(_) => kind::EXEC,
            Frame::Started { .. } => kind::STARTED,
            Frame::Stdin(_) => kind::STDIN,
            Frame::Stdout(_) => kind::STDOUT,
            Frame::Stderr(_) => kind::STDERR,
            Frame::Resize(_) => kind::RESIZE,
            Frame::Signal(_) => kind::SIGNAL,
            Frame::Exit(_) => kind::EXIT,
            Frame::Error(_) => kind::ERROR,
        }
    }

    /// The whole frame, header included, ready for one `write_all` (so frames written under a
    /// lock never interleave).
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        let json = |value: serde_json::Result<Vec<u8>>| value.map_err(io::Error::other);
        let payload = match self {
            Frame::Hello(hello) => json(serde_json::to_vec(hello))?,
            Frame::Exec(request) => json(serde_json::to_vec(request))?,
            Frame::Started { pid } => json(serde_json::to_vec(&PidPayload { pid: *pid }))?,
            Frame::Stdin(data) | Frame::Stdout(data) | Frame::Stderr(data) => data.clone(),
            Frame::Resize(size) => json(serde_json::to_vec(size))?,
            Frame::Signal(signal) => json(serde_json::to_vec(&SignalPayload { signal: *signal }))?,
            Frame::Exit(exit) => json(serde_json::to_vec(exit))?,
            Frame::Error(failure) => json(serde_json::to_vec(failure))?,
        };
        if payload.len() > MAX_PAYLOAD {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a frame larger than the protocol allows"));
        }
        let mut bytes = Vec::with_capacity(5 + payload.len());
        bytes.push(self.kind());
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }

    /// Decodes a payload of `kind`.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Frame, ProtocolError> {
        fn json<'a, T: Deserialize<'a>>(name: &'static str, payload: &'a [u8]) -> Result<T, ProtocolError> {
            serde_json::from_slice(payload).map_err(|err| ProtocolError::Malformed { kind: name, reason: err.to_string() })
        }
        Ok(match kind {
            kind::HELLO => Frame::Hello(json("hello", payload)?),
            kind::EXEC => Frame::Exec(json("exec", payload)?),
            kind::STARTED => Frame::Started { pid: json::<PidPayload>("started", payload)?.pid },
            kind::STDIN => Frame::Stdin(payload.to_vec()),
            kind::STDOUT => Frame::Stdout(payload.to_vec()),
            kind::STDERR => Frame::Stderr(payload.to_vec()),
            kind::RESIZE => Frame::Resize(json("resize", payload)?),
            kind::SIGNAL => Frame::Signal(json::<SignalPayload>("signal", payload)?.signal),
            kind::EXIT => Frame::Exit(json("exit", payload)?),
            kind::ERROR => Frame::Error(json("error", payload)?),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// Writes one frame.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> io::Result<()> {
    writer.write_all(&frame.encode()?)?;
    writer.flush()
}

/// Reads one frame; `None` when the connection ended cleanly between frames.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<Frame>, ProtocolError> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
    let kind = header[0];
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if length as usize > MAX_PAYLOAD {
        return Err(ProtocolError::TooLarge { kind, length });
    }
    let mut payload = vec![0u8; length as usize];
    reader.read_exact(&mut payload).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(err),
    })?;
    Frame::decode(kind, &payload).map(Some)
}

/// Why two hellos do not make a conversation, in words for the user.
pub fn version_mismatch(ours: &Hello, theirs: &Hello) -> Option<String> {
    (ours.protocol != theirs.protocol).then(|| {
        format!(
            "{} speaks agent protocol {} but {} speaks protocol {}: the agent binary and msb come from different builds",
            theirs.software, theirs.protocol, ours.software, ours.protocol
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: &Frame) -> Frame {
        let bytes = frame.encode().expect("encode");
        read_frame(&mut bytes.as_slice()).expect("decode").expect("a frame")
    }

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello::new("msb")),
            Frame::Exec(ExecRequest {
                argv: vec!["sh".into(), "-c".into(), "echo ✓".into()],
                env: vec!["A=b".into()],
                workdir: Some("/srv".into()),
                user: Some("app:staff".into()),
                tty: Some(WindowSize { rows: 24, cols: 80 }),
            }),
            Frame::Exec(ExecRequest { argv: vec!["true".into()], ..ExecRequest::default() }),
            Frame::Started { pid: 42 },
            Frame::Stdin(b"input\0\xff".to_vec()),
            Frame::Stdin(Vec::new()),
            Frame::Stdout(vec![0; CHUNK]),
            Frame::Stderr(b"oops\n".to_vec()),
            Frame::Resize(WindowSize { rows: 50, cols: 200 }),
            Frame::Signal(15),
            Frame::Exit(Exit::Code(7)),
            Frame::Exit(Exit::Signal(9)),
            Frame::Error(Failure { message: "`nope`: command not found".into(), exit_code: Some(127) }),
            Frame::Error(Failure { message: "bad".into(), exit_code: None }),
        ]
    }

    #[test]
    fn every_frame_survives_a_round_trip() {
        for frame in every_kind() {
            assert_eq!(round_trip(&frame), frame);
        }
    }

    #[test]
    fn frames_follow_each_other_on_one_stream() {
        let frames = every_kind();
        let mut bytes = Vec::new();
        for frame in &frames {
            write_frame(&mut bytes, frame).expect("write");
        }
        let mut reader = bytes.as_slice();
        for frame in &frames {
            assert_eq!(read_frame(&mut reader).expect("read").as_ref(), Some(frame));
        }
        assert!(read_frame(&mut reader).expect("clean end").is_none());
    }

    #[test]
    fn the_wire_format_is_stable() {
        let bytes = Frame::Signal(2).encode().expect("encode");
        assert_eq!(bytes, b"\x08\x00\x00\x00\x0c{\"signal\":2}");
        let bytes = Frame::Stdout(b"hi".to_vec()).encode().expect("encode");
        assert_eq!(bytes, b"\x05\x00\x00\x00\x02hi");
        let exit = serde_json::to_string(&Exit::Code(3)).expect("json");
        assert_eq!(exit, r#"{"code":3}"#);
    }

    #[test]
    fn a_version_mismatch_is_explained() {
        let ours = Hello::new("msb");
        assert_eq!(version_mismatch(&ours, &Hello::new("msb-agent")), None);
        let theirs = Hello { protocol: 99, software: "msb-agent 9.0.0".into() };
        let message = version_mismatch(&ours, &theirs).expect("mismatch");
        assert!(message.starts_with("msb-agent 9.0.0 speaks agent protocol 99 but msb "), "{message}");
        assert!(message.contains("speaks protocol 1: the agent binary and msb come from different builds"), "{message}");
        // A newer hello with fields this build does not know still parses, so versions compare.
        let future = br#"{"protocol":2,"software":"msb-agent 2.0.0","features":["x"]}"#;
        let Frame::Hello(hello) = Frame::decode(kind::HELLO, future).expect("hello") else { panic!("not a hello") };
        assert_eq!(hello.protocol, 2);
    }

    #[test]
    fn bad_frames_are_errors() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"\x05\x00", "the connection ended in the middle of a frame"),
            (b"\x05\x00\x00\x00\x09short", "the connection ended in the middle of a frame"),
            (b"\x63\x00\x00\x00\x00", "unknown frame kind 99"),
            (b"\x05\xff\xff\xff\xff", "announces 4294967295 bytes"),
            (b"\x09\x00\x00\x00\x02{}", "a malformed exit frame"),
            (b"\x08\x00\x00\x00\x0e{\"signal\":\"x\"}", "a malformed signal frame"),
            (b"\x02\x00\x00\x00\x0c{\"argv\":[1]}", "a malformed exec frame"),
            (b"\x02\x00\x00\x00\x17{\"argv\":[],\"unknown\":1}", "unknown field"),
        ];
        for (bytes, expected) in cases {
            let err = read_frame(&mut &bytes[..]).expect_err("an error");
            assert!(err.to_string().contains(expected), "{bytes:?}: {err}");
        }
    }

    #[test]
    fn config_reads_as_msb_writes_it() {
        let text = r#"{
            "argv": ["/app/run", "--port", "8080"],
            "env": ["DEBUG=1"],
            "workdir": "/app",
            "user": "app",
            "init": {"path": "/sbin/init"},
            "listen": {"unix": "/.msb/run/agent.sock"},
            "hostname": "worker"
        }"#;
        let config: AgentConfig = serde_json::from_str(text).expect("config");
        assert_eq!(config.init, InitMode::Path("/sbin/init".into()));
        assert_eq!(config.listen, Listen::Unix("/.msb/run/agent.sock".into()));
        let again: AgentConfig = serde_json::from_slice(&serde_json::to_vec(&config).expect("json")).expect("config");
        assert_eq!(again, config);
        let minimal: AgentConfig = serde_json::from_str(r#"{"listen": {"vsock": 1024}, "init": "agent"}"#).expect("config");
        assert_eq!((minimal.workdir.as_str(), minimal.init, minimal.argv.len()), ("/", InitMode::Agent, 0));
        let err = serde_json::from_str::<AgentConfig>(r#"{"listen": {"unix": "/s"}, "mounts": true}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `mounts`"), "{err}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut reader = bytes.as_slice();
            // Reads until the garbage runs out or turns out to be an error; never panics.
            for _ in 0..bytes.len() + 1 {
                match read_frame(&mut reader) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn garbage_payloads_never_panic(kind in 0u8..16, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::decode(kind, &payload);
        }

        #[test]
        fn data_frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), which in 0u8..3) {
            let frame = match which {
                0 => Frame::Stdin(data),
                1 => Frame::Stdout(data),
                _ => Frame::Stderr(data),
            };
            prop_assert_eq!(round_trip(&frame), frame);
        }

        #[test]
        fn requests_round_trip(argv in proptest::collection::vec(".*", 0..4), env in proptest::collection::vec(".*", 0..3),
                               rows in any::<u16>(), cols in any::<u16>(), tty in any::<bool>()) {
            let frame = Frame::Exec(ExecRequest {
                argv, env, workdir: None, user: Some("1000:1000".into()),
                tty: tty.then_some(WindowSize { rows, cols }),
            });
            prop_assert_eq!(round_trip(&frame), frame);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..200) {
            let bytes = Frame::Exec(ExecRequest { argv: vec!["echo".into(), "hi".into()], ..ExecRequest::default() })
                .encode().expect("encode");
            let cut = cut % bytes.len();
            let result = read_frame(&mut &bytes[..cut]);
            let expected = match cut {
                0 => matches!(result, Ok(None)),
                _ => matches!(result, Err(ProtocolError::Truncated)),
            };
            prop_assert!(expected, "{:?}", result);
        }
    }
}
