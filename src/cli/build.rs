//! `msb plan`, `msb build` and `msb export`: the layer cache, seen and filled.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{Format, ProjectArgs};
use crate::error::Error;
use crate::project::{self, Project};
use crate::store::{PullOptions, PullPolicy};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Sandboxes to plan [default: all]
    pub names: Vec<String>,
    /// `json` lists each step with its key, status and reason.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Sandboxes to build [default: all]
    pub names: Vec<String>,
    /// When to contact the image's registry.
    #[arg(long, value_enum, default_value_t)]
    pub pull: PullPolicy,
    #[command(flatten)]
    pub publish: super::publish::PushArgs,
}

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    pub project: ProjectArgs,
    /// The sandbox whose root to export.
    pub name: String,
    /// A folder to create, or a file ending in `.tar`.
    pub dest: PathBuf,
}

pub(super) fn plan(home: Option<PathBuf>, args: PlanArgs) -> Result<ExitCode, Error> {
    let (manifest, store) = args.project.open(home)?;
    let plans = Project { manifest: &manifest, store: &store }.plan(&args.names)?;
    match args.format {
        Format::Json => out!("{}", serde_json::to_string_pretty(&plans).unwrap_or_default()),
        Format::Human => plans.iter().for_each(|plan| out!("{}", plan.to_string().trim_end())),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn build(home: Option<PathBuf>, args: BuildArgs) -> Result<ExitCode, Error> {
    let (manifest, store) = args.project.open(home)?;
    let pull = PullOptions { policy: args.pull, ..PullOptions::default() };
    let built = Project { manifest: &manifest, store: &store }.build(&args.names, &pull, &mut |plan| eprint!("{plan}"))?;
    let steps: usize = built.iter().map(|b| b.plan.steps.len()).sum();
    let rebuilt = built.iter().flat_map(|b| &b.plan.steps).filter(|s| s.reason.is_some()).count();
    eprintln!("built {} sandbox(es): {rebuilt} of {steps} steps built, {} cached", built.len(), steps - rebuilt);
    super::publish::push(&manifest, &store, &built, &args.publish)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn export(home: Option<PathBuf>, args: ExportArgs) -> Result<ExitCode, Error> {
    let (manifest, store) = args.project.open(home)?;
    let pull = PullOptions { policy: PullPolicy::Missing, ..PullOptions::default() };
    let built = Project { manifest: &manifest, store: &store }.build(&[args.name], &pull, &mut |_| {})?;
    if let Some(sandbox) = built.first() {
        project::export(&store, sandbox, &args.dest)?;
        eprintln!("exported `{}` to {}", sandbox.name, args.dest.display());
    }
    Ok(ExitCode::SUCCESS)
}
