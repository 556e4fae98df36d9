//! `msb build --push` and `msb export k8s`: a sandbox leaves the laptop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::HumanBytes;

use super::{ProjectArgs, build};
use crate::error::Error;
use crate::manifest::Manifest;
use crate::project::{Built, Project};
use crate::publish::k8s::{self, K8sOptions};
use crate::publish::{self, Agent, PublishError};
use crate::store::{ProgressMode, Store};

/// The flags `msb build` takes to publish what it built.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Push the sandbox as an OCI image to this registry reference (`REGISTRY/REPO[:TAG]`).
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// The guest agent baked in at `/.msb/agent` [default: `msb-agent` next to msb]
    #[arg(long, value_name = "PATH", requires = "push", conflicts_with = "no_agent")]
    pub agent: Option<PathBuf>,
    /// Publish without the agent: the image runs the sandbox's command (or its init) as PID 1.
    #[arg(long, requires = "push")]
    pub no_agent: bool,
}

/// `msb export NAME DEST`, or `msb export k8s NAME`.
///
/// `NAME DEST` are this command's own arguments, required unless a subcommand is given; a
/// sandbox named `k8s` is exported with `msb export -- k8s DEST`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ExportCommand {
    #[command(subcommand)]
    pub to: Option<ExportTo>,
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The sandbox whose root to export.
    #[arg(required = true)]
    pub name: Option<String>,
    /// A folder to create, or a file ending in `.tar`.
    #[arg(required = true)]
    pub dest: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ExportTo {
    /// Print a Kubernetes Pod (a Deployment with `--replicas`) running the sandbox's pushed image.
    K8s(K8sArgs),
}

#[derive(Debug, Args)]
pub struct K8sArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The sandbox.
    pub name: String,
    /// The RuntimeClass that runs it (`kata`, `crun-krun`...); the cluster's default when absent.
    #[arg(long, value_name = "CLASS")]
    pub runtime_class: Option<String>,
    /// Write a Deployment of this many replicas instead of a Pod.
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// The image [default: the last `msb build NAME --push REF` of this Sandboxfile, pinned by digest]
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: K8sFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum K8sFormat {
    #[default]
    Yaml,
    Json,
}

/// Publishes the one sandbox `msb build` just built, when `--push` asks for it.
pub(super) fn push(manifest: &Manifest, store: &Store, built: &[Built], args: &PushArgs) -> Result<(), Error> {
    let Some(target) = &args.push else { return Ok(()) };
    let [sandbox] = built else { return Err(PublishError::OneSandbox { count: built.len() }.into()) };
    let agent = match (&args.agent, args.no_agent) {
        (_, true) => Agent::Without,
        (Some(path), false) => Agent::Path(path.clone()),
        (None, false) => Agent::BesideMsb,
    };
    let started = Instant::now();
    // The image's blobs are written to the store and then pushed from it: `cache gc` waits.
    let _publishing = store.publishing()?;
    let assembled = publish::assemble(manifest, store, sandbox, &agent)?;
    let report = publish::push(manifest, store, &assembled, target, ProgressMode::Auto)?;
    eprintln!(
        "pushed `{}` in {:.2} s: {} blob(s) uploaded ({}), {} mounted, {} already there",
        sandbox.name,
        started.elapsed().as_secs_f64(),
        report.uploaded,
        HumanBytes(report.uploaded_bytes),
        report.mounted,
        report.present,
    );
    let pinned = publish::last_pushed(manifest, store, sandbox.name.as_str()).map(|p| p.pinned()).unwrap_or_default();
    out!("{pinned}");
    Ok(())
}

pub(super) fn export(home: Option<PathBuf>, command: ExportCommand) -> Result<ExitCode, Error> {
    match (command.to, command.name, command.dest) {
        (Some(ExportTo::K8s(args)), _, _) => k8s(home, args),
        (None, Some(name), Some(dest)) => build::export(home, build::ExportArgs { project: command.project, name, dest }),
        // clap requires `NAME DEST` when no subcommand is given.
        _ => Ok(ExitCode::from(2)),
    }
}

fn k8s(home: Option<PathBuf>, args: K8sArgs) -> Result<ExitCode, Error> {
    let (manifest, store) = args.project.open(home)?;
    if let Some(class) = args.runtime_class.as_ref().filter(|c| !k8s::valid_runtime_class(c)) {
        return Err(PublishError::RuntimeClass { class: class.clone() }.into());
    }
    let project = Project { manifest: &manifest, store: &store };
    let (name, config) = project.select(std::slice::from_ref(&args.name))?.into_iter().next().ok_or_else(|| {
        PublishError::NotPushed { sandbox: args.name.clone() }
    })?;
    let image = match args.image {
        Some(image) => image,
        None => publish::last_pushed(&manifest, &store, name.as_str())
            .map(|pushed| pushed.pinned())
            .ok_or_else(|| PublishError::NotPushed { sandbox: name.to_string() })?,
    };
    let options = K8sOptions { image, runtime_class: args.runtime_class, replicas: args.replicas };
    let document = k8s::manifest(name.as_str(), config, &options);
    match args.format {
        K8sFormat::Yaml => out!("{}", document.to_yaml().trim_end()),
        K8sFormat::Json => out!("{}", document.to_json().trim_end()),
    }
    Ok(ExitCode::SUCCESS)
}
