//! `msb up` (the Sandboxfile's sandboxes) and `msb run` (one sandbox from flags): build, boot,
//! and in the foreground follow their output until they exit or Ctrl-C stops them.

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use indexmap::IndexMap;

use super::ProjectArgs;
use crate::error::Error;
use crate::manifest::{
    EnvName, GuestPath, ImageName, Init, Manifest, Network, Runtime, SandboxConfig, SandboxName, Sandboxfile, Script,
    ScriptName,
};
use crate::project::Project;
use crate::runtime::Sandboxes;
use crate::sandbox::Detached;
use crate::{sandbox, supervisor};
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
    /// Re-run when the Sandboxfile, a script file or a patch source changes: only the layers an
    /// edit touches are rebuilt, only the sandboxes it changes restart.
    #[arg(short, long, conflicts_with = "detach")]
    pub watch: bool,
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
    boot(manifest, &store, args.names, args.pull, args.detach, args.watch, false)
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
    let result = boot(manifest, &store, Vec::new(), args.pull, args.detach, false, true);
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

/// Builds `names` of `manifest` and boots them: detached, returns once they run; else follows
/// them (and with `watch`, re-runs them on changes) until they exit or Ctrl-C. `raw` output is the
/// sandbox's alone, with no plan and no name before each line (`msb run`).
fn boot(manifest: Manifest, store: &Store, names: Vec<String>, pull: PullPolicy, detach: bool, watch: bool, raw: bool) -> Result<ExitCode, Error> {
    let sandboxes = Sandboxes::new(store.root());
    super::sandboxes::clean_stale(&sandboxes)?;
    let pull = PullOptions { policy: pull, ..PullOptions::default() };
    if !detach {
        let hooks = supervisor::Hooks {
            say: Box::new(|line| eprintln!("{line}")),
            error: Box::new(super::render),
            output: Arc::new(|| Box::new(io::stdout())),
        };
        let code = supervisor::run(manifest, store, supervisor::Options { names, pull, watch, raw }, hooks)?;
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let agent = sandbox::agent_binary()?;
    let built = Project { manifest: &manifest, store }.build(&names, &pull, &mut |plan| eprint!("{plan}"))?;
    let mut said_why = false;
    for built in &built {
        let name = built.name.as_str();
        let choice = match sandbox::up_detached(&sandboxes, &manifest, built, &agent)? {
            Detached::UpToDate => {
                eprintln!("{name}: running, up to date");
                continue;
            }
            Detached::Started(choice) => choice,
            Detached::Restarted(choice) => {
                eprintln!("{name}: was running with another configuration: restarted");
                choice
            }
        };
        // `auto` says once which backend it chose and why (krun needs hardware KVM).
        if manifest.file.sandbox[&built.name].runtime == Runtime::Auto && !said_why {
            eprintln!("runtime {}", choice.reason);
            said_why = true;
        }
        eprintln!("{name}: started");
    }
    Ok(ExitCode::SUCCESS)
}
