//! The exec server: one thread per connection, each connection one command.
//!
//! It runs in its own process (started by PID 1, in its own session), never in PID 1 itself:
//! PID 1 reaps every orphan with `waitpid(-1)`, which would steal the exit statuses the server
//! waits for. The server only waits for its own children, by pid.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::Errno;
use rustix::net::{Shutdown, SocketFlags, sockopt};
use rustix::process::{Pid, PidfdFlags, Signal};

use super::process::{self, LaunchError};
use super::protocol::{
    AgentConfig, CHUNK, ExecRequest, Exit, Failure, Frame, Hello, Listen, ProtocolError, read_frame, version_mismatch,
    write_frame,
};
use super::{pty, user};

/// How long a connection may take to say hello and ask for a command.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the command exits, output still in flight is relayed until the streams close or stay
/// quiet this long (a background child may hold them open forever) ...
const DRAIN_IDLE: Duration = Duration::from_millis(100);
/// ... and at most this long.
const DRAIN_MAX: Duration = Duration::from_secs(1);

/// Binds the exec server's socket. A unix socket left by an earlier boot is replaced.
pub(crate) fn bind(listen: &Listen) -> io::Result<OwnedFd> {
    match listen {
        Listen::Unix(path) => {
            let path = Path::new(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
            Ok(UnixListener::bind(path)?.into())
        }
        Listen::Vsock(port) => {
            use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket};
            use std::os::fd::AsRawFd;
            const VMADDR_CID_ANY: u32 = u32::MAX;
            let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, *port))?;
            listen(&fd, Backlog::MAXCONN)?;
            Ok(fd)
        }
    }
}

/// Accepts connections on `listener` forever, each in its own thread.
pub(crate) fn serve(listener: OwnedFd, config: AgentConfig) -> io::Error {
    let config = Arc::new(config);
    loop {
        match rustix::net::accept_with(&listener, SocketFlags::CLOEXEC) {
            Ok(socket) => {
                let config = Arc::clone(&config);
                let spawned = thread::Builder::new().name("exec".into()).spawn(move || {
                    if let Err(err) = connection(File::from(socket), &config) {
                        eprintln!("msb-agent: exec connection: {err}");
                    }
                });
                if let Err(err) = spawned {
                    eprintln!("msb-agent: cannot start a thread for an exec: {err}");
                }
            }
            Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO) => {}
            // Out of file descriptors or memory: wait for other execs to finish.
            Err(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM) => thread::sleep(Duration::from_millis(50)),
            Err(err) => return err.into(),
        }
    }
}

/// Errors that end a connection; the agent logs them, the host sees the connection close.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The socket's writing half, shared by the threads of one exec so that frames never interleave.
#[derive(Clone)]
struct Sender(Arc<Mutex<File>>);

impl Sender {
    fn send(&self, frame: &Frame) -> io::Result<()> {
        let mut socket = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&mut *socket, frame)
    }
}

/// Speaks the protocol on one connection: hellos, the request, then the command's life.
fn connection(socket: File, config: &AgentConfig) -> Result<(), ConnectionError> {
    sockopt::set_socket_timeout(&socket, sockopt::Timeout::Recv, Some(HANDSHAKE_TIMEOUT)).map_err(io::Error::from)?;
    let mut reader = socket.try_clone()?;
    let sender = Sender(Arc::new(Mutex::new(socket)));
    let refuse = |message: String| sender.send(&Frame::Error(Failure { message, exit_code: None }));
    let theirs = match read_frame(&mut reader)? {
        Some(Frame::Hello(hello)) => hello,
        None => return Ok(()),
        Some(_) => {
            refuse("the first frame must be a hello".into())?;
            return Ok(());
        }
    };
    let ours = Hello::new("msb-agent");
    sender.send(&Frame::Hello(ours.clone()))?;
    if let Some(message) = version_mismatch(&ours, &theirs) {
        eprintln!("msb-agent: refused a connection: {message}");
        refuse(message)?;
        return Ok(());
    }
    let request = match read_frame(&mut reader)? {
        Some(Frame::Exec(request)) => request,
        // A ping: the host only checked that the agent answers.
        None => return Ok(()),
        Some(_) => {
            refuse("expected an exec request after the hello".into())?;
            return Ok(());
        }
    };
    sockopt::set_socket_timeout(&reader, sockopt::Timeout::Recv, None).map_err(io::Error::from)?;
    let running = match start(&request, config) {
        Ok(running) => running,
        Err(err) => {
            sender.send(&Frame::Error(Failure { message: err.to_string(), exit_code: Some(err.exit_code()) }))?;
            return Ok(());
        }
    };
    if let Err(err) = sender.send(&Frame::Started { pid: running.pid.as_raw_nonzero().get() }) {
        // Nobody to relay to.
        let _ = rustix::process::kill_process_group(running.pid, Signal::KILL);
        reap(&running.child);
        return Err(err.into());
    }
    relay(running, reader, sender);
    Ok(())
}

/// One of the command's outputs, and the frame its bytes travel in.
struct Output {
    file: File,
    frame: fn(Vec<u8>) -> Frame,
}

/// A started command and the ends the agent keeps.
struct Running {
    pid: Pid,
    /// The child until it is reaped; signals go through this lock so that they can never reach a
    /// recycled pid.
    child: Arc<Mutex<Option<Child>>>,
    /// Where stdin goes: the pipe, or the terminal's master.
    stdin: Option<File>,
    /// What is relayed to the host.
    outputs: Vec<Output>,
    /// The terminal's master, for resizes and its foreground process group.
    terminal: Option<OwnedFd>,
}

fn start(request: &ExecRequest, config: &AgentConfig) -> Result<Running, LaunchError> {
    let identity = user::resolve_in_guest(request.user.as_deref().or(config.user.as_deref()))?;
    let env = process::environment(&config.env, &request.env, &identity.home, request.tty.is_some());
    let workdir = request.workdir.as_deref().unwrap_or(&config.workdir);
    let terminal = request.tty.map(pty::open).transpose().map_err(LaunchError::Terminal)?;
    // Everything that can fail is done before the spawn: after it, an error would orphan the
    // command.
    let masters = match &terminal {
        Some(pty) => {
            let clone = || pty.master.try_clone().map_err(LaunchError::Terminal);
            Some((clone()?, clone()?))
        }
        None => None,
    };
    let mut command = process::command(&request.argv, &env, workdir, &identity, terminal.as_ref().map(|t| &t.slave))?;
    if terminal.is_none() {
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let program = request.argv.first().map(String::as_str).unwrap_or_default();
    let mut child = command.spawn().map_err(|cause| process::spawn_error(program, cause, &env))?;
    // The command holds the only copies of the slave now: the master reads EOF when it exits.
    drop(command);
    let pid = Pid::from_child(&child);
    let (stdin, outputs, terminal) = match (terminal, masters) {
        (Some(pty), Some((stdin, control))) => {
            (Some(File::from(stdin)), vec![Output { file: File::from(pty.master), frame: Frame::Stdout }], Some(control))
        }
        _ => {
            let stdin = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
            let mut outputs = Vec::new();
            if let Some(stdout) = child.stdout.take() {
                outputs.push(Output { file: File::from(OwnedFd::from(stdout)), frame: Frame::Stdout });
            }
            if let Some(stderr) = child.stderr.take() {
                outputs.push(Output { file: File::from(OwnedFd::from(stderr)), frame: Frame::Stderr });
            }
            (stdin, outputs, None)
        }
    };
    Ok(Running { pid, child: Arc::new(Mutex::new(Some(child))), stdin, outputs, terminal })
}

/// What the host may do to a running command.
struct Control {
    pid: Pid,
    child: Arc<Mutex<Option<Child>>>,
    terminal: Option<OwnedFd>,
}

impl Control {
    /// Signals the command's process group (with a terminal, its foreground group), unless it
    /// was already reaped.
    fn signal(&self, signal: Signal) {
        let child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if child.is_none() {
            return;
        }
        let group = self.terminal.as_ref().and_then(|t| rustix::termios::tcgetpgrp(t).ok()).unwrap_or(self.pid);
        if rustix::process::kill_process_group(group, signal).is_err() {
            let _ = rustix::process::kill_process(self.pid, signal);
        }
    }

    /// The host is gone: kills the command's group and, with a terminal, the job in its
    /// foreground (a shell running `vim` has them apart), so that nothing waits for input
    /// that will never come.
    fn hang_up(&self) {
        let child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if child.is_none() {
            return;
        }
        if let Some(foreground) = self.terminal.as_ref().and_then(|t| rustix::termios::tcgetpgrp(t).ok()) {
            let _ = rustix::process::kill_process_group(foreground, Signal::KILL);
        }
        if rustix::process::kill_process_group(self.pid, Signal::KILL).is_err() {
            let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        }
    }
}

/// Relays the command's life: stdin and control frames in a thread, outputs and the exit here.
fn relay(running: Running, reader: File, sender: Sender) {
    let Running { pid, child, stdin, outputs, terminal } = running;
    let control = Control { pid, child: Arc::clone(&child), terminal };
    let input = thread::Builder::new().name("exec-input".into()).spawn(move || receive(reader, stdin, control));
    if let Err(err) = input {
        // Without the input thread the host cannot stop it: do not leave it running.
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        eprintln!("msb-agent: cannot start a thread for an exec: {err}");
    }
    let exit = send_outputs(pid, &child, outputs, &sender);
    // A host that went away has nobody to tell.
    let _ = sender.send(&Frame::Exit(exit));
    let socket = sender.0.lock().unwrap_or_else(PoisonError::into_inner);
    // Ends the input thread's read too.
    let _ = rustix::net::shutdown(socket.as_fd(), Shutdown::Both);
}

/// The input side: stdin data, resizes and signals from the host. When the host goes away
/// before the command exits, the command is killed: nobody could see or stop it any more.
fn receive(mut reader: File, mut stdin: Option<File>, control: Control) {
    let tty = control.terminal.is_some();
    loop {
        match read_frame(&mut reader) {
            Ok(Some(Frame::Stdin(data))) if data.is_empty() => {
                // A terminal has no end of input: the user types ^D.
                if !tty {
                    stdin = None;
                }
            }
            Ok(Some(Frame::Stdin(data))) => {
                // The command may have closed its stdin: what follows is dropped.
                if stdin.as_mut().is_some_and(|s| s.write_all(&data).is_err()) {
                    stdin = None;
                }
            }
            Ok(Some(Frame::Resize(size))) => {
                if let Some(terminal) = &control.terminal {
                    let _ = pty::resize(terminal, size);
                }
            }
            Ok(Some(Frame::Signal(number))) => match Signal::from_named_raw(number) {
                Some(signal) => control.signal(signal),
                None => eprintln!("msb-agent: ignored signal {number} from the host: not a signal the agent can send"),
            },
            Ok(Some(_)) => eprintln!("msb-agent: ignored an unexpected frame during an exec"),
            Ok(None) | Err(_) => {
                control.hang_up();
                return;
            }
        }
    }
}

/// Relays stdout and stderr until the command exits and its outputs are drained; reaps it.
fn send_outputs(
    pid: Pid,
    child: &Mutex<Option<Child>>,
    mut outputs: Vec<Output>,
    sender: &Sender,
) -> Exit {
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())
        .map_err(|err| eprintln!("msb-agent: pidfd_open: {err}: waiting for the outputs to close instead"))
        .ok();
    let mut exit = None;
    let mut drain_started = None;
    let mut host_gone = false;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if outputs.is_empty() && (exit.is_some() || pidfd.is_none()) {
            break;
        }
        let timeout = drain_started.map(|started: Instant| {
            let left = DRAIN_MAX.saturating_sub(started.elapsed()).min(DRAIN_IDLE);
            Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) }
        });
        let watch_pid = exit.is_none() && pidfd.is_some();
        let mut fds: Vec<PollFd<'_>> = outputs.iter().map(|output| PollFd::new(&output.file, PollFlags::IN)).collect();
        if let (true, Some(pidfd)) = (watch_pid, &pidfd) {
            fds.push(PollFd::new(pidfd, PollFlags::IN));
        }
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => break,
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(err) => {
                eprintln!("msb-agent: poll: {err}");
                break;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        if watch_pid && ready.last() == Some(&true) {
            exit = Some(reap(child));
            drain_started = Some(Instant::now());
        }
        let mut index = 0;
        outputs.retain_mut(|Output { file, frame }| {
            let is_ready = ready.get(index).copied().unwrap_or(false);
            index += 1;
            if !is_ready {
                return true;
            }
            match file.read(&mut buf) {
                Ok(0) => false,
                Ok(n) => {
                    if !host_gone && sender.send(&frame(buf[..n].to_vec())).is_err() {
                        // Keep reading, so the command never blocks on a full pipe.
                        host_gone = true;
                    }
                    true
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => true,
                // EIO: a terminal whose last slave closed.
                Err(_) => false,
            }
        });
        if drain_started.is_some_and(|started| started.elapsed() >= DRAIN_MAX) {
            break;
        }
    }
    exit.unwrap_or_else(|| reap(child))
}

/// Waits for the command (it has exited or is about to) and takes it out of reach of signals.
fn reap(child: &Mutex<Option<Child>>) -> Exit {
    let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
    match child.take().map(|mut c| c.wait()) {
        Some(Ok(status)) => exit_of(status),
        Some(Err(err)) => {
            eprintln!("msb-agent: wait: {err}");
            Exit::Code(255)
        }
        None => Exit::Code(255),
    }
}

/// The exit of a std child, as the protocol says it.
fn exit_of(status: ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(255),
    }
}
