//! `msb pull`, `images`, `rmi`, `load`: the store's image commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::HumanBytes;

use crate::error::Error;
use crate::reference::ImageSource;
use crate::store::{ProgressMode, PullOptions, PullPolicy, Store, archive_source};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `alpine:3.20`, `ghcr.io/org/app@sha256:…`, `oci:DIR[:TAG]`, `oci-archive:TAR`,
    /// `docker-archive:TAR` or `dir:ROOTFS`
    #[arg(value_parser = parse_source)]
    pub image: ImageSource,
    /// When to reach the image's source: `missing` uses the store's copy when it has one, without
    /// any network
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing, value_name = "POLICY")]
    pub pull: PullPolicy,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The image's name as `msb images` shows it (`alpine` works for `docker.io/library/alpine:latest`),
    /// or a prefix of its digest
    pub image: String,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// An `oci-archive` or `docker-archive` tar file (the kind is read from its content)
    pub archive: PathBuf,
    /// A name for the image, e.g. `myapp:dev` (default: the names the archive gives it, and the archive's path)
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
}

/// clap's parser for image arguments: the reference module's sentence is the error.
fn parse_source(s: &str) -> Result<ImageSource, String> {
    s.parse::<ImageSource>().map_err(|err| match err.help() {
        Some(help) => format!("{err}\n  help: {help}"),
        None => err.to_string(),
    })
}

/// A `--name` is stored normalized, so `myapp` and `docker.io/library/myapp:latest` are one name.
fn parse_name(s: &str) -> Result<String, String> {
    parse_source(s).map(|source| source.to_string())
}

fn current_dir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"))
}

pub(super) fn pull(home: Option<PathBuf>, args: PullArgs) -> Result<ExitCode, Error> {
    let store = Store::open(home.as_deref())?;
    let source = args.image.resolve_against(&current_dir());
    let options = PullOptions { policy: args.pull, progress: ProgressMode::Auto, ..PullOptions::default() };
    let record = store.pull_blocking(&source, &options)?;
    println!("{}", record.digest);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn list(home: Option<PathBuf>) -> Result<ExitCode, Error> {
    let store = Store::open(home.as_deref())?;
    let rows: Vec<[String; 3]> = store
        .images()?
        .into_iter()
        .map(|(name, record)| {
            let size = if record.rootfs_dir.is_some() { "-".to_owned() } else { HumanBytes(record.size()).to_string() };
            [name, record.digest.short().to_owned(), size]
        })
        .collect();
    let width = rows.iter().map(|row| row[0].len()).max().unwrap_or(0).max(4);
    println!("{:width$}  {:12}  SIZE", "NAME", "DIGEST");
    for [name, digest, size] in rows {
        println!("{name:width$}  {digest:12}  {size}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rmi(home: Option<PathBuf>, args: RmiArgs) -> Result<ExitCode, Error> {
    let store = Store::open(home.as_deref())?;
    // A name is matched as `msb images` writes it; a short one is normalized first.
    let name = match args.image.parse::<ImageSource>() {
        Ok(source) if store.has_name(&source.resolve_against(&current_dir()).to_string()) => {
            source.resolve_against(&current_dir()).to_string()
        }
        _ => args.image,
    };
    for removed in store.remove(&name)? {
        println!("removed {removed}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn load(home: Option<PathBuf>, args: LoadArgs) -> Result<ExitCode, Error> {
    let store = Store::open(home.as_deref())?;
    let written = args.archive.to_string_lossy();
    let source = match written.parse::<ImageSource>() {
        Ok(source @ (ImageSource::OciArchive(_) | ImageSource::DockerArchive(_))) => source.resolve_against(&current_dir()),
        _ => archive_source(&absolute(&args.archive))?,
    };
    let options = PullOptions {
        policy: PullPolicy::Always,
        progress: ProgressMode::Auto,
        names: args.name.into_iter().collect(),
        platform: None,
    };
    let record = store.pull_blocking(&source, &options)?;
    println!("{}", record.digest);
    Ok(ExitCode::SUCCESS)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() { path.to_owned() } else { current_dir().join(path) }
}
