//! The host side of the exec protocol: runs a command in a sandbox through its agent's socket.
//!
//! Blocking, on std threads: stdin is pumped by a thread of its own while the calling thread
//! writes stdout and stderr. Async callers (the SDK) run it in `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! # use msb::agent::client;
//! # use msb::agent::protocol::ExecRequest;
//! let request = ExecRequest { argv: vec!["echo".into(), "hi".into()], ..ExecRequest::default() };
//! let exit = client::exec("/run/msb/worker/run/agent.sock".as_ref(), &request, std::io::empty(),
//!                         &mut std::io::stdout(), &mut std::io::stderr())?;
//! std::process::exit(exit.code());
//! # Ok::<(), client::ClientError>(())
//! ```

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::protocol::{CHUNK, ExecRequest, Exit, Frame, Hello, ProtocolError, WindowSize, read_frame, version_mismatch, write_frame};

/// How long the agent may take to answer the hello and start the command.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an exec did not give an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the sandbox's agent at `{}`: {cause}", path.display())]
    Connect { path: PathBuf, cause: io::Error },
    #[error("the agent's connection failed: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    VersionMismatch(String),
    /// The command could not be started (not found, not executable, unknown user...).
    #[error("{message}")]
    CannotRun { message: String, exit_code: i32 },
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent sent an unexpected frame ({0})")]
    Unexpected(String),
    #[error("the agent closed the connection before the command exited")]
    Disconnected,
    #[error("cannot write the command's output: {0}")]
    Output(io::Error),
}

impl ClientError {
    /// What `msb exec` exits with: the shell's 126/127 when the command could not run, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::CannotRun { exit_code, .. } => *exit_code,
            _ => 125,
        }
    }
}

/// Says hello and hangs up: tells whether the agent at `socket` is up and speaks our protocol.
pub fn ping(socket: &Path) -> Result<Hello, ClientError> {
    let stream = connect(socket)?;
    handshake(&stream)
}

/// Pings until the agent answers (it is booting) or `timeout` passes; gives the last error.
pub fn wait_ready(socket: &Path, timeout: Duration) -> Result<Hello, ClientError> {
    let started = Instant::now();
    loop {
        match ping(socket) {
            Ok(hello) => return Ok(hello),
            Err(err @ ClientError::VersionMismatch(_)) => return Err(err),
            Err(err) if started.elapsed() >= timeout => return Err(err),
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Runs `request` in the sandbox whose agent listens on `socket`: `stdin` is streamed to the
/// command (its end closes the command's stdin), its output written to `stdout` and `stderr`
/// (with a tty, all to `stdout`). Returns how the command ended.
pub fn exec<R: Read + Send + 'static>(
    socket: &Path,
    request: &ExecRequest,
    stdin: R,
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> Result<Exit, ClientError> {
    Session::start(socket, request)?.run(stdin, stdout, stderr)
}

/// A command started in the sandbox, for callers that also resize its terminal or signal it
/// (`msb shell`, Ctrl-C in `msb exec`) through a [`Control`].
pub struct Session {
    reader: UnixStream,
    control: Control,
    pid: i32,
}

/// Sends resizes and signals to a running command; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Control(Arc<Mutex<UnixStream>>);

impl Control {
    fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut stream = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *stream, frame)
    }

    /// The host terminal was resized (only meaningful with a tty).
    pub fn resize(&self, size: WindowSize) -> io::Result<()> {
        self.send(&Frame::Resize(size))
    }

    /// Delivers `signal` (a number, e.g. 15) to the command's process group (with a tty, the
    /// terminal's foreground group).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        self.send(&Frame::Signal(signal))
    }
}

fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|cause| ClientError::Connect { path: socket.to_owned(), cause })
}

fn handshake(stream: &UnixStream) -> Result<Hello, ClientError> {
    let io = |cause: io::Error| ClientError::Protocol(ProtocolError::Io(cause));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let ours = Hello::new("msb");
    write_frame(&mut &*stream, &Frame::Hello(ours.clone())).map_err(io)?;
    match read_frame(&mut &*stream)? {
        Some(Frame::Hello(theirs)) => match version_mismatch(&ours, &theirs) {
            Some(message) => Err(ClientError::VersionMismatch(message)),
            None => Ok(theirs),
        },
        Some(Frame::Error(failure)) => Err(ClientError::Refused(failure.message)),
        Some(other) => Err(unexpected(&other)),
        None => Err(ClientError::Disconnected),
    }
}

fn unexpected(frame: &Frame) -> ClientError {
    let text = format!("{frame:?}");
    ClientError::Unexpected(text.chars().take(80).collect())
}

impl Session {
    /// Connects, checks the agent's version and starts the command.
    pub fn start(socket: &Path, request: &ExecRequest) -> Result<Session, ClientError> {
        let stream = connect(socket)?;
        handshake(&stream)?;
        let io = |cause: io::Error| ClientError::Protocol(ProtocolError::Io(cause));
        write_frame(&mut &stream, &Frame::Exec(request.clone())).map_err(io)?;
        let pid = match read_frame(&mut &stream)? {
            Some(Frame::Started { pid }) => pid,
            Some(Frame::Error(failure)) => {
                return Err(match failure.exit_code {
                    Some(exit_code) => ClientError::CannotRun { message: failure.message, exit_code },
                    None => ClientError::Refused(failure.message),
                });
            }
            Some(other) => return Err(unexpected(&other)),
            None => return Err(ClientError::Disconnected),
        };
        stream.set_read_timeout(None).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Session { reader: stream, control: Control(Arc::new(Mutex::new(writer))), pid })
    }

    /// The command's pid in the guest.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Streams until the command exits. The stdin thread may stay blocked reading `stdin` after
    /// this returns (a terminal that never ends); it ends at its next read.
    pub fn run<R: Read + Send + 'static>(
        mut self,
        stdin: R,
        stdout: &mut impl Write,
        stderr: &mut impl Write,
    ) -> Result<Exit, ClientError> {
        let control = self.control.clone();
        thread::Builder::new()
            .name("msb-exec-stdin".into())
            .spawn(move || pump(stdin, control))
            .map_err(|cause| ClientError::Protocol(ProtocolError::Io(cause)))?;
        let result = self.relay(stdout, stderr);
        // Ends the stdin thread's next send, and tells the agent we are gone.
        let _ = self.reader.shutdown(Shutdown::Both);
        result
    }

    fn relay(&mut self, stdout: &mut impl Write, stderr: &mut impl Write) -> Result<Exit, ClientError> {
        loop {
            // A reset is a close that left our stdin unread: the agent went away all the same.
            let frame = match read_frame(&mut self.reader) {
                Err(ProtocolError::Io(err)) if err.kind() == io::ErrorKind::ConnectionReset => None,
                other => other?,
            };
            match frame {
                Some(Frame::Stdout(data)) => stdout.write_all(&data).and_then(|()| stdout.flush()).map_err(ClientError::Output)?,
                Some(Frame::Stderr(data)) => stderr.write_all(&data).and_then(|()| stderr.flush()).map_err(ClientError::Output)?,
                Some(Frame::Exit(exit)) => return Ok(exit),
                Some(Frame::Error(failure)) => return Err(ClientError::Refused(failure.message)),
                Some(other) => return Err(unexpected(&other)),
                None => return Err(ClientError::Disconnected),
            }
        }
    }
}

/// Copies `stdin` to the agent in chunks, then closes the command's stdin.
fn pump(mut stdin: impl Read, control: Control) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if control.send(&Frame::Stdin(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = control.send(&Frame::Stdin(Vec::new()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake agent that answers one connection with `script`.
    fn fake_agent(script: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        thread::spawn(move || {
            if let Ok((stream, _)) = listener.accept() {
                script(stream);
            }
        });
        (dir, path)
    }

    #[test]
    fn an_agent_of_another_protocol_is_refused_clearly() {
        let (_dir, socket) = fake_agent(|mut stream| {
            let _ = read_frame(&mut stream);
            let hello = Hello { protocol: 2, software: "msb-agent 2.0.0".into() };
            let _ = write_frame(&mut stream, &Frame::Hello(hello));
        });
        let err = ping(&socket).unwrap_err();
        let expected = format!(
            "msb-agent 2.0.0 speaks agent protocol 2 but msb {} speaks protocol 1: the agent binary and msb come from different builds",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(err.to_string(), expected);
        assert_eq!(err.exit_code(), 125);
    }

    #[test]
    fn failures_name_their_cause() {
        let err = ping(Path::new("/nonexistent/agent.sock")).unwrap_err();
        assert!(err.to_string().starts_with("cannot connect to the sandbox's agent at `/nonexistent/agent.sock`: "), "{err}");

        let (_dir, socket) = fake_agent(|mut stream| {
            let _ = read_frame(&mut stream);
            let _ = write_frame(&mut stream, &Frame::Hello(Hello::new("msb-agent")));
            let _ = read_frame(&mut stream);
            let failure = super::super::protocol::Failure { message: "`x`: command not found".into(), exit_code: Some(127) };
            let _ = write_frame(&mut stream, &Frame::Error(failure));
        });
        let request = ExecRequest { argv: vec!["x".into()], ..ExecRequest::default() };
        let err = exec(&socket, &request, io::empty(), &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert_eq!((err.to_string().as_str(), err.exit_code()), ("`x`: command not found", 127));

        let (_dir, socket) = fake_agent(|mut stream| {
            let _ = read_frame(&mut stream);
            let _ = write_frame(&mut stream, &Frame::Hello(Hello::new("msb-agent")));
            let _ = read_frame(&mut stream);
            let _ = write_frame(&mut stream, &Frame::Started { pid: 7 });
            let _ = write_frame(&mut stream, &Frame::Stdout(b"partial".to_vec()));
        });
        let mut stdout = Vec::new();
        let err = exec(&socket, &request, io::empty(), &mut stdout, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, ClientError::Disconnected), "{err}");
        assert_eq!(stdout, b"partial");
    }
}
