//! The Rust SDK: sandboxes built in code, the same product as the CLI.
//!
//! A [`SandboxBuilder`] writes what it is told as a Sandboxfile's sandbox table: that text goes
//! through the Sandboxfile loader (schema, msb's own checks, the same diagnostics), then the same
//! plan, layer cache and runtime as `msb up -d`. So a builder and a Sandboxfile can never mean
//! different things, and [`SandboxBuilder::sandboxfile`] prints the file a project can commit.
//!
//! ```no_run
//! # async fn demo() -> Result<(), msb::Error> {
//! use msb::Sandbox;
//!
//! let sb = Sandbox::builder("worker")
//!     .image("alpine:3.20")
//!     .script("greet", "echo hello from a script")
//!     .patch(|p| p.text("/etc/greeting.txt", "Hello!\n", None, false))
//!     .create()
//!     .await?;
//! let out = sb.exec("greet", [] as [&str; 0]).await?;
//! assert_eq!(out.stdout, "hello from a script\n");
//! sb.stop().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::agent::ExecRequest;
use crate::error::Error;
use crate::manifest::{self, Manifest, Runtime};
use crate::project::Project;
use crate::runtime::{DEFAULT_STOP_TIMEOUT, RuntimeError, Sandboxes};
use crate::sandbox;
use crate::store::{PullOptions, Store};

/// What runs as the sandbox's PID 1 (the Sandboxfile's `init`).
///
/// ```
/// let text = msb::Sandbox::builder("w").init(msb::Init::Auto).sandboxfile();
/// assert!(text.contains("init = \"auto\""));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// msb's agent (the default).
    Agent,
    /// The image's own init, found among the usual places.
    Auto,
    /// An init at this absolute path in the image, e.g. `/sbin/init`.
    Path(String),
}

/// A running (or stopped) sandbox of an msb home.
///
/// ```no_run
/// # async fn demo() -> Result<(), msb::Error> {
/// let sb = msb::Sandbox::builder("w").image("alpine").create().await?;
/// println!("{}", sb.shell("uname -a").await?.stdout);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Sandbox {
    name: String,
    sandboxes: Sandboxes,
}

/// What a command run in a sandbox printed and how it ended.
///
/// ```no_run
/// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
/// let msb::Output { stdout, stderr, status } = sb.exec("ls", ["/"]).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// The exit code; 128 + N when a signal N killed it.
    pub status: i32,
}

impl Output {
    /// Whether the command exited with 0.
    ///
    /// ```
    /// let out = msb::Output { stdout: String::new(), stderr: String::new(), status: 3 };
    /// assert!(!out.success());
    /// ```
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A sandbox being described. Every setter mirrors a key of a Sandboxfile's sandbox table.
///
/// ```
/// let builder = msb::Sandbox::builder("w").image("alpine").command(["sleep", "60"]);
/// assert_eq!(builder.sandboxfile(), "[sandbox.w]\nimage = \"alpine\"\ncommand = [\"sleep\", \"60\"]\n");
/// ```
#[derive(Debug, Clone)]
pub struct SandboxBuilder {
    name: String,
    table: Table,
    env: Table,
    scripts: Table,
    patches: Vec<Value>,
    dir: PathBuf,
    home: Option<PathBuf>,
}

/// Patches in the order they are applied (a Sandboxfile's `[[sandbox.NAME.patch]]` list). Modes
/// are permission bits (`0o644`); `replace` allows overwriting a path the image already has.
///
/// ```
/// let text = msb::Sandbox::builder("w").patch(|p| p.mkdir("/app", None).remove("/etc/issue")).sandboxfile();
/// assert_eq!(text.matches("[[sandbox.w.patch]]").count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PatchBuilder {
    patches: Vec<Value>,
}

impl Sandbox {
    /// Describes a sandbox named `name` (lowercase letters, digits, `-`, `_`, `.`). Host paths
    /// (`copy_file` sources, script files, local images) are relative to the current folder, as a
    /// Sandboxfile's are relative to its own.
    ///
    /// ```
    /// let builder = msb::Sandbox::builder("worker").image("alpine");
    /// assert!(builder.manifest().is_ok());
    /// ```
    pub fn builder(name: &str) -> SandboxBuilder {
        SandboxBuilder {
            name: name.to_owned(),
            table: Table::new(),
            env: Table::new(),
            scripts: Table::new(),
            patches: Vec::new(),
            dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: None,
        }
    }

    /// Builds and starts sandbox `name` of the Sandboxfile at `path` in the background, as
    /// `msb up -d -f PATH NAME` does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), msb::Error> {
    /// let sb = msb::Sandbox::from_sandboxfile("Sandboxfile", "worker").await?;
    /// println!("{}", sb.logs().await?);
    /// # Ok(()) }
    /// ```
    pub async fn from_sandboxfile(path: impl AsRef<Path>, name: &str) -> Result<Sandbox, Error> {
        let manifest = manifest::load(path.as_ref())?;
        up(manifest, name.to_owned(), None).await
    }

    /// The sandbox's name.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), msb::Error> {
    /// let sb = msb::Sandbox::builder("worker").image("alpine").create().await?;
    /// assert_eq!(sb.name(), "worker");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `cmd` (a script's name runs the script) with `args` and collects its output.
    ///
    /// ```no_run
    /// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
    /// let out = sb.exec("cat", ["/etc/os-release"]).await?;
    /// assert!(out.success());
    /// # Ok(()) }
    /// ```
    pub async fn exec<I, S>(&self, cmd: &str, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv: Vec<String> = std::iter::once(cmd.to_owned()).chain(args.into_iter().map(Into::into)).collect();
        let (sandboxes, name) = (self.sandboxes.clone(), self.name.clone());
        blocking(move || {
            let request = ExecRequest { argv, ..ExecRequest::default() };
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let exit = sandbox::exec(&sandboxes, &name, &request, std::io::empty(), &mut stdout, &mut stderr)?;
            Ok(Output {
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                status: exit.code(),
            })
        })
        .await
    }

    /// Runs a shell script (`/bin/sh -c script`).
    ///
    /// ```no_run
    /// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
    /// let out = sb.shell("echo $((6 * 7))").await?;
    /// assert_eq!(out.stdout, "42\n");
    /// # Ok(()) }
    /// ```
    pub async fn shell(&self, script: &str) -> Result<Output, Error> {
        self.exec("/bin/sh", ["-c", script]).await
    }

    /// Everything the sandbox's main command (or its init) has printed so far.
    ///
    /// ```no_run
    /// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
    /// print!("{}", sb.logs().await?);
    /// # Ok(()) }
    /// ```
    pub async fn logs(&self) -> Result<String, Error> {
        let path = self.sandboxes.log_path(&self.name);
        let bytes = tokio::fs::read(&path).await.map_err(RuntimeError::io("read", &path))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Stops it: its init's stop signal, then SIGKILL after 10 s. Its layer is kept.
    ///
    /// ```no_run
    /// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
    /// sb.stop().await?;
    /// sb.remove().await?;
    /// # Ok(()) }
    /// ```
    pub async fn stop(&self) -> Result<(), Error> {
        let (sandboxes, name) = (self.sandboxes.clone(), self.name.clone());
        blocking(move || Ok(sandboxes.stop(&name, DEFAULT_STOP_TIMEOUT)?)).await
    }

    /// Removes it (killing it if it runs), its own layer included.
    ///
    /// ```no_run
    /// # async fn demo(sb: msb::Sandbox) -> Result<(), msb::Error> {
    /// sb.remove().await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(self) -> Result<(), Error> {
        let (sandboxes, name) = (self.sandboxes.clone(), self.name.clone());
        blocking(move || Ok(sandboxes.remove(&name)?)).await
    }
}

impl SandboxBuilder {
    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.table.insert(key.to_owned(), value.into());
        self
    }

    /// The base image: a registry reference, or `oci:DIR[:TAG]`, `oci-archive:TAR`,
    /// `docker-archive:TAR`, `dir:ROOTFS`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").image("alpine:3.20").sandboxfile();
    /// assert!(text.contains("image = \"alpine:3.20\""), "{text}");
    /// ```
    pub fn image(self, image: &str) -> Self {
        self.set("image", image)
    }

    /// What runs as PID 1.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").init(msb::Init::Path("/sbin/init".into())).sandboxfile();
    /// assert!(text.contains("init = \"/sbin/init\""), "{text}");
    /// ```
    pub fn init(self, init: Init) -> Self {
        let value = match init {
            Init::Agent => "agent".to_owned(),
            Init::Auto => "auto".to_owned(),
            Init::Path(path) => path,
        };
        self.set("init", value)
    }

    /// Replaces the image's ENTRYPOINT (and drops its CMD).
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").entrypoint(["/bin/sh", "-c"]).sandboxfile();
    /// assert!(text.contains("entrypoint = [\"/bin/sh\", \"-c\"]"), "{text}");
    /// ```
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(self, argv: I) -> Self {
        self.set("entrypoint", strings(argv))
    }

    /// Replaces the image's CMD. Without `command` or `entrypoint`, the sandbox runs no main
    /// command (`command = []`) and stays up for [`Sandbox::exec`] until stopped.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").command(["serve", "--port", "80"]).sandboxfile();
    /// assert!(text.contains("command = [\"serve\", \"--port\", \"80\"]"), "{text}");
    /// ```
    pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(self, argv: I) -> Self {
        self.set("command", strings(argv))
    }

    /// The working directory of the command and of [`Sandbox::exec`].
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").workdir("/app").sandboxfile();
    /// assert!(text.contains("workdir = \"/app\""), "{text}");
    /// ```
    pub fn workdir(self, path: &str) -> Self {
        self.set("workdir", path)
    }

    /// An environment variable, over the image's.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").env("MODE", "dev").sandboxfile();
    /// assert!(text.contains("[sandbox.w.env]\nMODE = \"dev\""), "{text}");
    /// ```
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// The user: `name`, `uid` or `uid:gid`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").user("1000:1000").sandboxfile();
    /// assert!(text.contains("user = \"1000:1000\""), "{text}");
    /// ```
    pub fn user(self, user: &str) -> Self {
        self.set("user", user)
    }

    /// CPUs (a quota in whole CPUs under `oci`, vCPUs under `krun`).
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").cpus(2).sandboxfile();
    /// assert!(text.contains("cpus = 2"), "{text}");
    /// ```
    pub fn cpus(self, cpus: u8) -> Self {
        self.set("cpus", i64::from(cpus))
    }

    /// A memory limit with a unit: `"512MiB"`, `"2GiB"`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").memory("512MiB").sandboxfile();
    /// assert!(text.contains("memory = \"512MiB\""), "{text}");
    /// ```
    pub fn memory(self, memory: &str) -> Self {
        self.set("memory", memory)
    }

    /// Which backend boots it.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").runtime(msb::Runtime::Oci).sandboxfile();
    /// assert!(text.contains("runtime = \"oci\""), "{text}");
    /// ```
    pub fn runtime(self, runtime: Runtime) -> Self {
        let name = match runtime {
            Runtime::Auto => "auto",
            Runtime::Krun => "krun",
            Runtime::Oci => "oci",
        };
        self.set("runtime", name)
    }

    /// A script, callable by name (on `PATH` at `/.msb/scripts/NAME`); `#!/bin/sh` is added when
    /// the body has no shebang.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").script("greet", "echo hi").sandboxfile();
    /// assert!(text.contains("[sandbox.w.scripts]\ngreet = \"echo hi\""), "{text}");
    /// ```
    pub fn script(mut self, name: &str, body: &str) -> Self {
        self.scripts.insert(name.to_owned(), body.into());
        self
    }

    /// A script kept in a file of the project (relative to the current folder).
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").script_file("serve", "scripts/serve.sh").sandboxfile();
    /// assert!(text.contains("[sandbox.w.scripts.serve]\nfile = \"scripts/serve.sh\""), "{text}");
    /// ```
    pub fn script_file(mut self, name: &str, path: impl AsRef<Path>) -> Self {
        let file = Table::from_iter([("file".to_owned(), Value::from(path.as_ref().to_string_lossy().into_owned()))]);
        self.scripts.insert(name.to_owned(), Value::Table(file));
        self
    }

    /// Appends patches, applied in order before boot.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.remove("/etc/issue")).sandboxfile();
    /// assert!(text.contains("[[sandbox.w.patch]]\nop = \"remove\"\npath = \"/etc/issue\""), "{text}");
    /// ```
    pub fn patch(mut self, patches: impl FnOnce(PatchBuilder) -> PatchBuilder) -> Self {
        self.patches.extend(patches(PatchBuilder::default()).patches);
        self
    }

    /// The folder host paths are relative to [default: the current folder], as a Sandboxfile's
    /// are relative to its own.
    ///
    /// ```
    /// let builder = msb::Sandbox::builder("w").image("alpine").project_dir("/srv/project");
    /// assert_eq!(builder.manifest().unwrap().dir, std::path::Path::new("/srv/project"));
    /// ```
    pub fn project_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Where msb keeps images, layers and sandboxes [default: `$MSB_HOME`, else
    /// `$XDG_CACHE_HOME/msb`], as the CLI's `--home`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), msb::Error> {
    /// let sb = msb::Sandbox::builder("w").image("alpine").home("/var/tmp/msb").create().await?;
    /// # Ok(()) }
    /// ```
    pub fn home(mut self, home: impl Into<PathBuf>) -> Self {
        self.home = Some(home.into());
        self
    }

    /// The Sandboxfile that describes this sandbox, to commit or to run with `msb up`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("worker").image("alpine:3.20").command(["true"]).sandboxfile();
    /// assert_eq!(text, "[sandbox.worker]\nimage = \"alpine:3.20\"\ncommand = [\"true\"]\n");
    /// ```
    pub fn sandboxfile(&self) -> String {
        let mut sandbox = self.table.clone();
        // A sandbox made in code is usually driven by `exec`: without a command of its own it
        // runs none (not the image's CMD, often a shell that exits at once) and stays up.
        if !sandbox.contains_key("command") && !sandbox.contains_key("entrypoint") {
            sandbox.insert("command".to_owned(), Value::Array(Vec::new()));
        }
        for (key, table) in [("env", &self.env), ("scripts", &self.scripts)] {
            if !table.is_empty() {
                sandbox.insert(key.to_owned(), Value::Table(table.clone()));
            }
        }
        if !self.patches.is_empty() {
            sandbox.insert("patch".to_owned(), Value::Array(self.patches.clone()));
        }
        let named = Table::from_iter([(self.name.clone(), Value::Table(sandbox))]);
        let document = Table::from_iter([("sandbox".to_owned(), Value::Table(named))]);
        toml::to_string(&document).unwrap_or_default()
    }

    /// Validates the description as a Sandboxfile in the current folder: the same schema, checks
    /// and diagnostics.
    ///
    /// ```
    /// let bad = msb::Sandbox::builder("w").image("alpine").workdir("app");
    /// assert!(bad.manifest().is_err(), "a guest path must be absolute");
    /// ```
    pub fn manifest(&self) -> Result<Manifest, Error> {
        // A name nobody writes: diagnostics point into the generated text, labelled with it.
        let path = self.dir.join(format!("{}.sandbox (msb SDK)", self.name));
        Ok(manifest::parse(&path, self.sandboxfile().as_bytes()).map_err(manifest::ManifestError::from)?)
    }

    /// Pulls the image, builds the patch layers that are not cached, and starts the sandbox in
    /// the background; returns once its agent answers. A sandbox of the same name already running
    /// with the same description is reused; with another, it is restarted. One that belongs to
    /// another Sandboxfile (or to a builder with another `project_dir`) is refused.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), msb::Error> {
    /// let sb = msb::Sandbox::builder("w").image("alpine").create().await?;
    /// # Ok(()) }
    /// ```
    pub async fn create(self) -> Result<Sandbox, Error> {
        let manifest = self.manifest()?;
        up(manifest, self.name, self.home).await
    }
}

impl PatchBuilder {
    fn push(mut self, op: &str, fields: Vec<(&str, Value)>) -> Self {
        let mut patch = Table::from_iter([("op".to_owned(), Value::from(op))]);
        patch.extend(fields.into_iter().map(|(k, v)| (k.to_owned(), v)));
        self.patches.push(Value::Table(patch));
        self
    }

    /// Writes `content` at `path`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.text("/etc/motd", "hi", Some(0o644), true)).sandboxfile();
    /// assert!(text.contains("op = \"text\"\npath = \"/etc/motd\"\ncontent = \"hi\"\nmode = \"0644\"\nreplace = true"), "{text}");
    /// ```
    pub fn text(self, path: &str, content: &str, mode: Option<u32>, replace: bool) -> Self {
        self.push("text", with_mode_replace(vec![("path", path.into()), ("content", content.into())], mode, Some(replace)))
    }

    /// Writes bytes at `path`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.file("/app/blob.bin", [1u8, 2], None, false)).sandboxfile();
    /// assert!(text.contains("op = \"file\"\npath = \"/app/blob.bin\"\ncontent = \"AQI=\""), "{text}");
    /// ```
    pub fn file(self, path: &str, bytes: impl AsRef<[u8]>, mode: Option<u32>, replace: bool) -> Self {
        use base64::Engine as _;
        let content = base64::engine::general_purpose::STANDARD.encode(bytes);
        self.push("file", with_mode_replace(vec![("path", path.into()), ("content", content.into())], mode, Some(replace)))
    }

    /// Creates a folder and its missing parents.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.mkdir("/app", Some(0o755))).sandboxfile();
    /// assert!(text.contains("op = \"mkdir\"\npath = \"/app\"\nmode = \"0755\""), "{text}");
    /// ```
    pub fn mkdir(self, path: &str, mode: Option<u32>) -> Self {
        self.push("mkdir", with_mode_replace(vec![("path", path.into())], mode, None))
    }

    /// Appends `content` to a file (created when missing).
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.append("/etc/hosts", "127.0.0.1 app")).sandboxfile();
    /// assert!(text.contains("op = \"append\"\npath = \"/etc/hosts\"\ncontent = \"127.0.0.1 app\""), "{text}");
    /// ```
    pub fn append(self, path: &str, content: &str) -> Self {
        self.push("append", vec![("path", path.into()), ("content", content.into())])
    }

    /// Copies a host file (relative to the current folder) to `dst`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.copy_file("cert.pem", "/etc/ssl/cert.pem", None, false)).sandboxfile();
    /// assert!(text.contains("op = \"copy_file\"\nsrc = \"cert.pem\"\ndst = \"/etc/ssl/cert.pem\""), "{text}");
    /// ```
    pub fn copy_file(self, src: &str, dst: &str, mode: Option<u32>, replace: bool) -> Self {
        self.push("copy_file", with_mode_replace(vec![("src", src.into()), ("dst", dst.into())], mode, Some(replace)))
    }

    /// Copies a host folder (relative to the current folder) to `dst`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.copy_dir("site", "/srv/www", false)).sandboxfile();
    /// assert!(text.contains("op = \"copy_dir\"\nsrc = \"site\"\ndst = \"/srv/www\""), "{text}");
    /// ```
    pub fn copy_dir(self, src: &str, dst: &str, replace: bool) -> Self {
        self.push("copy_dir", with_mode_replace(vec![("src", src.into()), ("dst", dst.into())], None, Some(replace)))
    }

    /// Makes `link` a symbolic link to `target`.
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.symlink("/srv/www", "/app/www", true)).sandboxfile();
    /// assert!(text.contains("op = \"symlink\"\ntarget = \"/srv/www\"\nlink = \"/app/www\"\nreplace = true"), "{text}");
    /// ```
    pub fn symlink(self, target: &str, link: &str, replace: bool) -> Self {
        self.push("symlink", with_mode_replace(vec![("target", target.into()), ("link", link.into())], None, Some(replace)))
    }

    /// Removes a path of the image (its layers are untouched: the removal is a whiteout).
    ///
    /// ```
    /// let text = msb::Sandbox::builder("w").patch(|p| p.remove("/etc/issue")).sandboxfile();
    /// assert!(text.contains("op = \"remove\"\npath = \"/etc/issue\""), "{text}");
    /// ```
    pub fn remove(self, path: &str) -> Self {
        self.push("remove", vec![("path", path.into())])
    }
}

/// The optional keys, written only when they differ from the Sandboxfile's defaults, so the
/// generated file reads as a person would write it.
fn with_mode_replace(mut fields: Vec<(&str, Value)>, mode: Option<u32>, replace: Option<bool>) -> Vec<(&str, Value)> {
    if let Some(mode) = mode {
        fields.push(("mode", Value::from(format!("{mode:04o}"))));
    }
    if replace == Some(true) {
        fields.push(("replace", Value::from(true)));
    }
    fields
}

fn strings<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Value {
    Value::Array(items.into_iter().map(|s| Value::from(s.into())).collect())
}

/// Builds `name` of `manifest` and starts it detached, as `msb up -d` does.
async fn up(manifest: Manifest, name: String, home: Option<PathBuf>) -> Result<Sandbox, Error> {
    blocking(move || {
        let store = Store::open(home.as_deref())?;
        let sandboxes = Sandboxes::new(store.root());
        sandboxes.cleanup_stale()?;
        let agent = sandbox::agent_binary()?;
        let built = Project { manifest: &manifest, store: &store }.build(std::slice::from_ref(&name), &PullOptions::default(), &mut |_| {})?;
        for built in &built {
            sandbox::up_detached(&sandboxes, &manifest, built, &agent)?;
        }
        Ok(Sandbox { name, sandboxes })
    })
    .await
}

/// Runs msb's blocking work (pulls, builds, crun) off the async runtime's threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}
