//! A small builder for running `msb` in a fresh project folder, in the style of just's tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

/// A project folder with files in it, and an `msb` command to run there.
pub(crate) struct Test {
    dir: TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// What a finished `msb` printed and returned.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Test {
    pub(crate) fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("msb-test-").tempdir().expect("create a temp dir");
        let home = dir.path().join(".msb-home");
        Test { dir, args: Vec::new(), env: vec![("MSB_HOME".into(), home.display().to_string())] }
    }

    /// Writes `Sandboxfile` at the project's root.
    pub(crate) fn sandboxfile(self, text: impl AsRef<[u8]>) -> Self {
        self.file("Sandboxfile", text)
    }

    /// Writes a file of the project, creating its folders.
    pub(crate) fn file(self, path: &str, content: impl AsRef<[u8]>) -> Self {
        let path = self.dir.path().join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create folders");
        }
        std::fs::write(&path, content).expect("write file");
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `msb` with the arguments in the project folder.
    pub(crate) fn run(&self) -> Output {
        self.run_in(self.dir.path())
    }

    /// Runs `msb` with these arguments (instead of the builder's) in the project folder, so one
    /// project can see several commands.
    pub(crate) fn msb<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, args: I) -> Output {
        let mut command = Command::new(msb());
        command.args(args.into_iter().map(|a| a.as_ref().to_owned()));
        self.output(command, self.dir.path())
    }

    /// An `msb` command in the project folder with the test's environment, to spawn and drive
    /// (a foreground `msb up` to interrupt, a shell under a terminal).
    pub(crate) fn command<I: IntoIterator<Item = S>, S: AsRef<str>>(&self, args: I) -> Command {
        let mut command = Command::new(msb());
        command.args(args.into_iter().map(|a| a.as_ref().to_owned()));
        command.envs(self.env.iter().map(|(k, v)| (k, v))).env_remove("RUST_LOG").current_dir(self.dir.path());
        command
    }

    /// The test's `MSB_HOME`.
    pub(crate) fn home(&self) -> PathBuf {
        self.dir.path().join(".msb-home")
    }

    /// Runs `msb` from a sub-folder of the project (which must exist).
    pub(crate) fn run_in(&self, cwd: &Path) -> Output {
        let mut command = Command::new(msb());
        command.args(&self.args);
        self.output(command, cwd)
    }

    fn output(&self, mut command: Command, cwd: &Path) -> Output {
        let output = command
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("RUST_LOG")
            .current_dir(cwd)
            .output()
            .expect("run msb");
        output_of(output)
    }
}

/// What a finished process printed and returned.
pub(crate) fn output_of(output: std::process::Output) -> Output {
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The `msb` binary cargo built for these tests.
pub(crate) fn msb() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_msb"))
}

/// The repository's root, where `Sandboxfile.example` and `schema/` live.
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the registry and builds the fixture images once per test run (idempotent scripts);
/// returns the folder of their local copies.
pub(crate) fn fixtures() -> &'static Path {
    static FIXTURES: OnceLock<PathBuf> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let script = repo().join("tests/fixtures/images.sh");
        let status = Command::new("bash").arg(&script).status().expect("run tests/fixtures/images.sh");
        assert!(status.success(), "tests/fixtures/images.sh failed");
        PathBuf::from(std::env::var("MSB_TEST_FIXTURES").unwrap_or_else(|_| "/tmp/msb-fixtures".into()))
    })
}
