//! `msb up` (the Sandboxfile's sandboxes) and `msb run` (one sandbox from flags): build, boot,
//! and in the foreground follow their output until they exit or Ctrl-C stops them.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use clap::Args;
use indexmap::IndexMap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::ProjectArgs;
use crate::error::Error;
use crate::manifest::{
    EnvName, GuestPath, ImageName, Init, Manifest, Network, Runtime, SandboxConfig, SandboxName, Sandboxfile, Script,
    ScriptName,
};
use crate::project::Project;
use crate::runtime::{DEFAULT_STOP_TIMEOUT, Running, Sandboxes};
use crate::sandbox;
use crate::store::{PullOptions, PullPolicy, Store};

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Sandboxes to start [default: all]
    pub names: Vec<String>,
    /// Start them and return; `msb logs`, `msb exec` and `msb stop` reach them later.
    #[arg(short, long)]
    pub detach: bool,
    /// When to contact the images' registries.
    #[arg(long, value_enum, default_value_t)]
    pub pull: PullPolicy,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image: a registry reference or `oci:DIR[:TAG]`, `oci-archive:TAR`, `docker-archive:TAR`,
    /// `dir:ROOTFS`.
    #[arg(value_parser = |s: &str| ImageName::parse(s).map_err(|e| e.to_string()))]
    pub image: ImageName,
    /// The command, replacing the image's CMD.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// The sandbox's name [default: run-XXXXXXXX]
    #[arg(long, value_parser = |s: &str| SandboxName::parse(s).map_err(|e| e.to_string()))]
    pub name: Option<SandboxName>,
    /// Start it and return, keeping it until `msb rm`.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the stopped sandbox (and its own layer) instead of removing it when it exits.
    #[arg(long)]
    pub keep: bool,
    /// A script mounted at `/.msb/scripts/NAME`, on PATH (repeatable).
    #[arg(long = "script", value_name = "NAME=BODY", value_parser = parse_script)]
    pub scripts: Vec<(ScriptName, Script)>,
    /// `agent`, `auto` or an absolute path: what runs as PID 1.
    #[arg(long, value_parser = |s: &str| Init::parse(s).map_err(|e| e.to_string()))]
    pub init: Option<Init>,
    /// Replaces the image's ENTRYPOINT (and drops its CMD).
    #[arg(long, value_name = "PROGRAM")]
    pub entrypoint: Option<String>,
    /// An environment variable (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(EnvName, String)>,
    /// The working directory.
    #[arg(short, long, value_parser = |s: &str| GuestPath::parse(s).map_err(|e| e.to_string()))]
    pub workdir: Option<GuestPath>,
    /// The user: `name`, `uid` or `uid:gid`.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Share the host's network instead of a private one with only loopback.
    #[arg(long)]
    pub host_network: bool,
    /// `auto`, `krun` or `oci`.
    #[arg(long, value_parser = parse_runtime, default_value = "auto")]
    pub runtime: Runtime,
    #[arg(long, value_enum, default_value_t)]
    pub pull: PullPolicy,
}

fn parse_env(s: &str) -> Result<(EnvName, String), String> {
    let (key, value) = s.split_once('=').ok_or("write KEY=VALUE")?;
    Ok((EnvName::parse(key).map_err(|e| e.to_string())?, value.to_owned()))
}

fn parse_script(s: &str) -> Result<(ScriptName, Script), String> {
    let (name, body) = s.split_once('=').ok_or("write NAME=BODY")?;
    Ok((ScriptName::parse(name).map_err(|e| e.to_string())?, Script::Inline(body.to_owned())))
}

fn parse_runtime(s: &str) -> Result<Runtime, String> {
    serde_json::from_value(serde_json::Value::from(s)).map_err(|_| "expected `auto`, `krun` or `oci`".to_owned())
}

pub(super) fn up(home: Option<PathBuf>, args: UpArgs) -> Result<ExitCode, Error> {
    let (manifest, store) = args.project.open(home)?;
    boot(&manifest, &store, &args.names, args.pull, args.detach, false)
}

pub(super) fn run(home: Option<PathBuf>, args: RunArgs) -> Result<ExitCode, Error> {
    let generated = || SandboxName::parse(&format!("run-{}", &crate::store::Digest::of(unique().as_bytes()).hex()[..8]));
    let name = match args.name {
        Some(name) => name,
        None => generated().map_err(|e| crate::store::StoreError::Damaged { path: "generated name".into(), reason: e.to_string() })?,
    };
    let config = SandboxConfig {
        image: args.image,
        init: args.init.unwrap_or_default(),
        runtime: args.runtime,
        entrypoint: args.entrypoint.map(|e| vec![e]),
        command: (!args.command.is_empty()).then_some(args.command),
        workdir: args.workdir,
        env: args.env.into_iter().collect(),
        user: args.user,
        cpus: None,
        memory: None,
        network: if args.host_network { Network::Host } else { Network::Private },
        scripts: args.scripts.into_iter().collect(),
        patch: Vec::new(),
    };
    // The same model as a Sandboxfile's, for a file that is never written: relative image paths
    // resolve against the current folder.
    let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut sandbox = IndexMap::new();
    sandbox.insert(name.clone(), config);
    let manifest = Manifest { path: dir.join(".msb-run"), dir, file: Sandboxfile { sandbox, watch: Default::default() } };
    let store = Store::open(home.as_deref())?;
    let result = boot(&manifest, &store, &[], args.pull, args.detach, true);
    if !args.detach && !args.keep {
        match Sandboxes::new(store.root()).remove(name.as_str()) {
            Ok(()) | Err(crate::runtime::RuntimeError::NotFound { .. }) => {}
            Err(err) => eprintln!("msb: {err}"),
        }
    }
    result
}

/// Something unique to this process and moment, for a generated name.
fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Builds `names` of `manifest`, boots them, and (unless `detach`) follows them. `raw` output
/// is the sandbox's alone, with no plan and no name before each line (`msb run`).
fn boot(manifest: &Manifest, store: &Store, names: &[String], pull: PullPolicy, detach: bool, raw: bool) -> Result<ExitCode, Error> {
    let sandboxes = Sandboxes::new(store.root());
    super::sandboxes::clean_stale(&sandboxes)?;
    let agent = sandbox::agent_binary()?;
    let pull = PullOptions { policy: pull, ..PullOptions::default() };
    let built = Project { manifest, store }.build(names, &pull, &mut |plan| if !raw { eprint!("{plan}") })?;
    let width = built.iter().map(|b| b.name.as_str().len()).max().unwrap_or(0);
    let mut running = Vec::new();
    let mut said_why = false;
    for built in &built {
        let name = built.name.as_str();
        let config = &manifest.file.sandbox[&built.name];
        let spec = sandbox::boot_spec(manifest, config, built, &agent)?;
        match sandboxes.running_digest(name)? {
            Some(digest) if digest == spec.digest() && detach => {
                eprintln!("{name}: running, up to date");
                continue;
            }
            Some(_) => {
                eprintln!("{name}: running: restarting it");
                sandboxes.stop(name, DEFAULT_STOP_TIMEOUT)?;
            }
            None => {}
        }
        let (started, choice) = sandbox::start(&sandboxes, config, &spec, detach)?;
        // `auto` says once which backend it chose and why (krun needs hardware KVM).
        if config.runtime == Runtime::Auto && !said_why && !raw {
            eprintln!("runtime {}", choice.reason);
            said_why = true;
        }
        if detach {
            eprintln!("{name}: started");
        }
        let prefix = if raw { String::new() } else { format!("{name:width$} | ") };
        running.push((prefix, started));
    }
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    follow(&sandboxes, running)
}

/// Streams every sandbox's output until all have exited. The first Ctrl-C (or SIGTERM, SIGHUP)
/// stops them all with their init's signal; a second kills them.
fn follow(sandboxes: &Sandboxes, running: Vec<(String, Running)>) -> Result<ExitCode, Error> {
    let names: Vec<String> = running.iter().map(|(_, r)| r.name().to_owned()).collect();
    let interrupted = Arc::new(AtomicBool::new(false));
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|cause| crate::runtime::RuntimeError::Io { op: "watch signals of", path: "msb".into(), cause })?;
    let handle = signals.handle();
    let stopper = {
        let (sandboxes, interrupted) = (sandboxes.clone(), interrupted.clone());
        thread::spawn(move || {
            let mut stops = Vec::new();
            for (count, _) in signals.forever().enumerate() {
                interrupted.store(true, Ordering::SeqCst);
                let timeout = if count == 0 { DEFAULT_STOP_TIMEOUT } else { std::time::Duration::ZERO };
                eprintln!("{} {}", if count == 0 { "stopping" } else { "killing" }, names.join(", "));
                for name in names.clone() {
                    let sandboxes = sandboxes.clone();
                    stops.push(thread::spawn(move || sandboxes.stop(&name, timeout)));
                }
            }
            for stop in stops {
                if let Ok(Err(err)) = stop.join() {
                    eprintln!("msb: {err}");
                }
            }
        })
    };
    let results: Vec<_> = thread::scope(|scope| {
        let waits: Vec<_> = running
            .into_iter()
            .map(|(prefix, running)| scope.spawn(move || running.wait(Some(&mut io::stdout()), &prefix)))
            .collect();
        waits.into_iter().map(|w| w.join().unwrap_or(Ok(Some(1)))).collect()
    });
    handle.close();
    let _ = stopper.join();
    let mut codes = Vec::new();
    for result in results {
        codes.push(result?.unwrap_or(0));
    }
    if interrupted.load(Ordering::SeqCst) {
        return Ok(ExitCode::from(130));
    }
    // One sandbox: its exit code, as a shell gives a command's; several: the first failure's.
    let code = codes.iter().copied().find(|c| *c != 0).unwrap_or(0);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
