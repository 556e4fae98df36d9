//! Images: pulls from a real registry (Debian's docker-registry on 127.0.0.1:5000, started by
//! `tests/fixtures/`) and from local sources, compared entry by entry with `umoci unpack` of the
//! same image; damaged blobs from an in-process fake registry; concurrent pulls.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use msb::store::{Digest, ImageRecord, Store};
use tempfile::TempDir;

use crate::fake_registry::{FakeRegistry, Image, PASSWORD, REFRESH_TOKEN, Serve, USER};
use crate::test::{fixtures, msb};
use crate::tree::Compare;

const REGISTRY: &str = "127.0.0.1:5000/msb-test";

/// A fresh store folder and `msb` commands run against it.
pub(crate) struct Home {
    dir: TempDir,
}

impl Home {
    pub(crate) fn new() -> Home {
        Home { dir: tempfile::Builder::new().prefix("msb-images-").tempdir().expect("tempdir") }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(msb());
        command.args(args).env("MSB_HOME", self.path()).env_remove("RUST_LOG").env_remove("MSB_INSECURE_REGISTRIES");
        command
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run msb")
    }

    /// Runs msb and expects success; returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "msb {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs msb and expects failure (exit 1); returns stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(output.status.code(), Some(1), "msb {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub(crate) fn store(&self) -> Store {
        Store::open(Some(self.path())).expect("open the store")
    }

    pub(crate) fn record(&self, name: &str) -> ImageRecord {
        self.store().lookup(name).expect("read the store").unwrap_or_else(|| panic!("`{name}` is not in the store"))
    }

    /// Everything under a store folder (`blobs/sha256`, `layers/sha256`, `tmp`...).
    pub(crate) fn entries(&self, dir: &str) -> Vec<String> {
        let path = self.path().join("v1").join(dir);
        let mut names: Vec<String> = match fs::read_dir(&path) {
            Ok(entries) => entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// One file-system entry, as compared between msb's merged layers and umoci's rootfs.
/// msb's merged view of an image against `umoci unpack`'s: every entry, mtimes and xattrs too.
fn assert_same_tree(what: &str, ours: &Path, theirs: &Path) {
    let compare = Compare { root: true, mtimes: true, skip: None };
    crate::tree::assert_same_tree(what, ("msb", ours), ("umoci", theirs), compare, 5);
}

/// `umoci unpack` of an OCI layout's image. Kept beside the fixtures under the digest of the
/// layout's `index.json`, so a rebuilt fixture gets a fresh one and runs leave no litter.
fn umoci(layout: &str, tag: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let index = fs::read(fixtures().join(layout).join("index.json")).expect("read the layout's index.json");
    let bundle = fixtures().join("umoci").join(format!("{layout}-{tag}-{}", Digest::of(&index).short()));
    if bundle.join("rootfs").is_dir() {
        return bundle.join("rootfs");
    }
    let building = fixtures().join("umoci").join(format!("building-{}-{layout}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    fs::create_dir_all(fixtures().join("umoci")).expect("mkdir");
    let image = format!("{}:{tag}", fixtures().join(layout).display());
    let output = Command::new("umoci").args(["unpack", "--image", &image]).arg(&building).output().expect("run umoci");
    assert!(output.status.success(), "umoci unpack {image}: {}", String::from_utf8_lossy(&output.stderr));
    // Another test process may have won the race; its copy is as good.
    if fs::rename(&building, &bundle).is_err() {
        let _ = fs::remove_dir_all(&building);
    }
    bundle.join("rootfs")
}

/// A read-only overlay of an image's layers, unmounted on drop.
struct Merged {
    dir: TempDir,
}

impl Merged {
    fn mount(home: &Home, name: &str) -> Merged {
        let record = home.record(name);
        let mut lowers = home.store().lowers(&record);
        let dir = tempfile::Builder::new().prefix("msb-merged-").tempdir().expect("tempdir");
        // overlayfs needs two lower folders when it has no upper one.
        let empty = dir.path().join("empty");
        let target = dir.path().join("root");
        fs::create_dir(&empty).expect("mkdir");
        fs::create_dir(&target).expect("mkdir");
        lowers.push(empty);
        let lowerdir: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("ro,lowerdir={}", lowerdir.join(":")))
            .arg(&target)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount the overlay of {name}");
        Merged { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.root()).status();
    }
}

pub(crate) fn registry(image: &str) -> String {
    format!("{REGISTRY}/{image}")
}

#[test]
fn registry_pulls_match_umoci() {
    fixtures();
    let cases = [
        ("busybox:latest", "busybox-oci", "latest"),
        ("busybox:uncompressed", "busybox-uncompressed-oci", "uncompressed"),
        // umoci 0.4.7 cannot read zstd layers; the gzip image has the same diff_id.
        ("busybox:zstd", "busybox-oci", "latest"),
        ("layered:oci", "layered-oci", "latest"),
        ("layered:schema2", "layered-oci", "latest"),
        ("multiarch:latest", "busybox-oci", "latest"),
        ("multiarch:schema2", "busybox-oci", "latest"),
    ];
    for (image, layout, tag) in cases {
        let home = Home::new();
        let name = registry(image);
        let digest = home.ok(&["pull", &name]);
        let record = home.record(&name);
        assert_eq!(digest.trim(), record.digest.to_string(), "{image}: stdout is the digest");
        assert!(home.entries("tmp").is_empty(), "{image}: tmp/ is clean: {:?}", home.entries("tmp"));
        let merged = Merged::mount(&home, &name);
        assert_same_tree(image, &merged.root(), &umoci(layout, tag));
    }
}

#[test]
fn schema2_and_oci_of_one_image_share_layers_and_config() {
    fixtures();
    let home = Home::new();
    home.ok(&["pull", &registry("layered:oci")]);
    home.ok(&["pull", &registry("layered:schema2")]);
    let (oci, schema2) = (home.record(&registry("layered:oci")), home.record(&registry("layered:schema2")));
    assert_ne!(oci.digest, schema2.digest);
    assert_eq!(oci.chain_id, schema2.chain_id);
    assert_eq!(oci.layers.len(), 4);
    assert_eq!(home.entries("layers/sha256").len(), 4, "the layers are shared");
    assert_eq!(oci.config, schema2.config);
    assert_eq!(oci.config.entrypoint, Some(vec!["/bin/suid".to_owned()]));
    assert_eq!(oci.config.cmd, Some(vec!["--flag".to_owned()]));
    assert_eq!(oci.config.working_dir.as_deref(), Some("/opq"));
    assert_eq!(oci.config.user.as_deref(), Some("1000:1000"));
    assert!(oci.config.env.iter().any(|e| e == "MSB_FIXTURE=layered"));
    assert!(oci.layers.iter().all(|l| l.media_type.contains("gzip")));
}

#[test]
fn multiarch_index_resolves_to_the_host_platform() {
    fixtures();
    let home = Home::new();
    home.ok(&["pull", &registry("multiarch:latest")]);
    home.ok(&["pull", &registry("busybox:latest")]);
    let multi = home.record(&registry("multiarch:latest"));
    let busybox = home.record(&registry("busybox:latest"));
    assert_eq!(multi.platform.architecture, msb::store::Platform::host().architecture);
    assert_eq!(multi.platform.os, "linux");
    // The fixture's host entry is busybox:latest itself, listed last.
    assert_eq!(multi.digest, busybox.digest);
    let store = home.store();
    let resolve = |name: &str| store.resolve(name).expect("read").expect("a ref");
    assert!(resolve(&registry("multiarch:latest")).index_digest.is_some());
    assert!(resolve(&registry("busybox:latest")).index_digest.is_none());
    let merged = Merged::mount(&home, &registry("multiarch:latest"));
    assert!(!merged.root().join("marker").exists(), "an entry for another platform was taken");
}

#[test]
fn one_layer_serves_gzip_zstd_and_uncompressed_blobs() {
    fixtures();
    let home = Home::new();
    for tag in ["latest", "zstd", "uncompressed"] {
        home.ok(&["pull", &registry(&format!("busybox:{tag}"))]);
    }
    let records: Vec<ImageRecord> = ["latest", "zstd", "uncompressed"].iter().map(|t| home.record(&registry(&format!("busybox:{t}")))).collect();
    let media: Vec<&str> = records.iter().map(|r| r.layers[0].media_type.as_str()).collect();
    assert_eq!(
        media,
        ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd", "application/vnd.oci.image.layer.v1.tar"]
    );
    assert!(records.windows(2).all(|w| w[0].layers[0].diff_id == w[1].layers[0].diff_id));
    assert!(records.windows(2).all(|w| w[0].layers[0].blob != w[1].layers[0].blob));
    assert_eq!(home.entries("layers/sha256").len(), 1);
    // Only the first pull downloaded the layer: the others found it by diff_id.
    assert_eq!(home.entries("blobs/sha256"), vec![records[0].layers[0].blob.hex().to_owned()]);
    assert!(home.store().verify().expect("verify").is_empty());
}

#[test]
fn local_sources_match_umoci() {
    let fixtures = fixtures();
    let at = |name: &str| fixtures.join(name).display().to_string();
    let cases = [
        format!("oci:{}", at("busybox-oci")),
        format!("oci:{}:latest", at("busybox-oci")),
        format!("oci-archive:{}", at("busybox.oci.tar")),
        format!("docker-archive:{}", at("busybox.docker.tar")),
        format!("oci:{}:zstd", at("busybox-zstd-oci")),
        format!("oci:{}:uncompressed", at("busybox-uncompressed-oci")),
        format!("oci:{}:latest", at("multiarch-oci")),
    ];
    let reference = umoci("busybox-oci", "latest");
    let home = Home::new();
    for source in &cases {
        home.ok(&["pull", source]);
        let merged = Merged::mount(&home, source);
        assert_same_tree(source, &merged.root(), &reference);
    }
    let layered = format!("oci:{}:latest", at("layered-oci"));
    home.ok(&["pull", &layered]);
    assert_same_tree(&layered, &Merged::mount(&home, &layered).root(), &umoci("layered-oci", "latest"));
    // All the busybox variants are one layer.
    assert_eq!(home.entries("layers/sha256").len(), 1 + 4);
    // Local sources leave no copy of their blobs.
    assert!(home.entries("blobs/sha256").is_empty());
    assert!(home.store().verify().expect("verify").is_empty());
}

/// `msb export` of a sandbox on the layered image (a FIFO, a device node, hard links, xattrs,
/// owners, modes, mtimes) writes the root `umoci unpack` gives, to a folder and in a tar (read
/// back by GNU tar, an unpacker that is not msb's).
#[test]
fn export_of_the_layered_image_matches_umoci() {
    fixtures();
    let home = Home::new();
    let project = tempfile::Builder::new().prefix("msb-export-").tempdir().expect("tempdir");
    let sandboxfile = project.path().join("Sandboxfile");
    fs::write(&sandboxfile, format!("[sandbox.layered]\nimage = \"{}\"\n", registry("layered:oci"))).expect("write");
    let sandboxfile = sandboxfile.to_str().expect("utf-8");
    let reference = umoci("layered-oci", "latest");

    let folder = project.path().join("root");
    home.ok(&["export", "-f", sandboxfile, "layered", folder.to_str().expect("utf-8")]);
    assert_same_tree("export to a folder", &folder, &reference);

    let tar = project.path().join("root.tar");
    home.ok(&["export", "-f", sandboxfile, "layered", tar.to_str().expect("utf-8")]);
    let unpacked = project.path().join("from-tar");
    fs::create_dir(&unpacked).expect("mkdir");
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "--numeric-owner", "-xpf"])
        .arg(&tar)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("run tar");
    assert!(status.success(), "GNU tar cannot read the exported tar");
    assert_same_tree("export to a tar", &unpacked, &reference);
}

#[test]
fn dir_source_is_used_in_place() {
    let rootfs = fixtures().join("busybox-rootfs");
    let home = Home::new();
    let source = format!("dir:{}", rootfs.display());
    home.ok(&["pull", &source]);
    let record = home.record(&source);
    assert_eq!(record.rootfs_dir.as_deref(), Some(fs::canonicalize(&rootfs).expect("canonicalize").as_path()));
    assert_eq!(home.store().lowers(&record), vec![fs::canonicalize(&rootfs).expect("canonicalize")]);
    assert!(home.entries("layers/sha256").is_empty(), "nothing is copied");
    // Relative paths are resolved against the current folder.
    let relative = home.command(&["pull", "dir:busybox-rootfs"]).current_dir(fixtures()).output().expect("run msb");
    assert!(relative.status.success(), "{relative:?}");
    let missing = home.fails(&["pull", "dir:/nonexistent/rootfs"]);
    assert!(missing.contains("cannot read `/nonexistent/rootfs`"), "{missing}");
}

#[test]
fn load_names_archives() {
    let fixtures = fixtures();
    let home = Home::new();
    let docker = fixtures.join("busybox.docker.tar");
    home.ok(&["load", docker.to_str().expect("utf-8")]);
    // `docker save`'s RepoTags name the image.
    home.record("docker.io/msb-test/busybox:latest");
    home.ok(&["load", fixtures.join("busybox.oci.tar").to_str().expect("utf-8"), "--name", "mine:v1"]);
    let mine = home.record("docker.io/library/mine:v1");
    let listing = home.ok(&["images"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert!(lines[0].starts_with("NAME") && lines[0].contains("DIGEST") && lines[0].ends_with("SIZE"), "{listing}");
    let row = lines.iter().find(|l| l.starts_with("docker.io/library/mine:v1")).expect("a row for mine:v1");
    assert!(row.contains(mine.digest.short()), "{row}");
    assert!(row.contains("KiB"), "{row}");
    assert_eq!(home.ok(&["rmi", "mine:v1"]).trim(), "removed docker.io/library/mine:v1");
    assert!(home.store().lookup("docker.io/library/mine:v1").expect("lookup").is_none());
    let err = home.fails(&["rmi", "mine:v1"]);
    assert!(err.contains("image `mine:v1` is not in the store"), "{err}");
    let not_archive = home.fails(&["load", fixtures.join("busybox-oci/index.json").to_str().expect("utf-8")]);
    assert!(not_archive.contains("is not a tar archive"), "{not_archive}");
}

#[test]
fn pull_never_with_an_empty_store_fails_clearly() {
    let home = Home::new();
    let err = home.fails(&["pull", "--pull", "never", "alpine:3.20"]);
    assert!(
        err.contains("image `docker.io/library/alpine:3.20` is not in the store, and `--pull never` forbids pulling it"),
        "{err}"
    );
    let bad = home.run(&["pull", "UPPER/Case:tag"]);
    assert_eq!(bad.status.code(), Some(2), "clap refuses the argument");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the repository name must be lowercase"), "{bad:?}");
}

/// A store holding the busybox fixture under `name` (loaded from its archive, no registry).
fn loaded_busybox(name: &str) -> Home {
    let home = Home::new();
    home.ok(&["load", fixtures().join("busybox.oci.tar").to_str().expect("utf-8"), "--name", name]);
    home
}

#[test]
fn warm_pull_missing_needs_no_network() {
    // Port 1 refuses every connection: only the store can answer for this name.
    let name = "127.0.0.1:1/msb-test/busybox:offline";
    let home = loaded_busybox(name);
    let started = Instant::now();
    home.ok(&["pull", name]);
    home.ok(&["pull", "--pull", "never", name]);
    let warm = started.elapsed() / 2;
    let always = home.fails(&["pull", "--pull", "always", name]);
    assert!(always.contains("cannot pull `127.0.0.1:1/msb-test/busybox:offline` from 127.0.0.1:1"), "{always}");
    // Debug builds are slower; the release figure (~2 ms) is in the issue's note.
    assert!(warm < Duration::from_millis(500), "warm pull took {warm:?}");

    // The same through a registry that counts its requests.
    let server = FakeRegistry::start(Image::new(b"hello"), Serve::Good);
    let name = server.name();
    home.ok(&["pull", &name]);
    let after_cold = server.requests();
    assert!(after_cold >= 3, "manifest, config and layer were fetched");
    home.ok(&["pull", &name]);
    assert_eq!(server.requests(), after_cold, "a warm pull makes no request");
    home.ok(&["pull", "--pull", "always", &name]);
    assert!(server.requests() > after_cold);
}

#[test]
fn damaged_blobs_are_refused_and_nothing_is_published() {
    let image = Image::new(b"content of the layer");
    let layer = image.layer_digest.clone();
    let cases = [
        (Serve::WrongBytes, "is damaged: its content has digest"),
        (Serve::Truncated, "the registry sends"),
        (Serve::TooLong, "the registry sends"),
        (Serve::ClosesEarly, "cannot pull"),
        (Serve::WrongDiffId, "unpacks to a tar whose digest is"),
        (Serve::Escape, "escapes the layer"),
    ];
    for (serve, expected) in cases {
        let home = Home::new();
        let server = FakeRegistry::start(image.clone(), serve);
        let err = home.fails(&["pull", &server.name()]);
        assert!(err.contains(expected), "{serve:?}: {err}");
        assert!(err.contains(&server.name()), "{serve:?}: names the image: {err}");
        let named = if serve == Serve::Escape { Digest::of(&image.escape_layer).to_string() } else { layer.to_string() };
        assert!(err.contains(&named), "{serve:?}: names the layer: {err}");
        if serve == Serve::Escape {
            assert!(err.contains("entry `../escaped`"), "names the entry: {err}");
        }
        for dir in ["blobs/sha256", "layers/sha256", "images/sha256", "refs", "tmp"] {
            assert!(home.entries(dir).is_empty(), "{serve:?}: {dir} holds {:?}", home.entries(dir));
        }
    }
}

#[test]
fn credentials_come_from_the_docker_config() {
    use base64::Engine as _;
    let basic = FakeRegistry::start(Image::new(b"basic"), Serve::Basic);
    let token = FakeRegistry::start(Image::new(b"token"), Serve::Token);
    let docker = tempfile::tempdir().expect("tempdir");
    let write_config = |password: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        let config = format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"{auth}"}},"127.0.0.1:{}":{{"identitytoken":"{REFRESH_TOKEN}"}}}}}}"#,
            basic.port, token.port
        );
        fs::write(docker.path().join("config.json"), config).expect("write config.json");
    };
    let pull = |home: &Home, name: &str| home.command(&["pull", name]).env("DOCKER_CONFIG", docker.path()).output().expect("run msb");

    let home = Home::new();
    let anonymous = home.fails(&["pull", &basic.name()]);
    assert!(anonymous.contains("not authorized (log in with `docker login 127.0.0.1:"), "{anonymous}");
    write_config("wrong");
    let wrong = pull(&home, &basic.name());
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("not authorized"), "{wrong:?}");
    write_config(PASSWORD);
    for server in [&basic, &token] {
        let output = pull(&home, &server.name());
        assert!(output.status.success(), "{}: {}", server.name(), String::from_utf8_lossy(&output.stderr));
    }
}

#[test]
fn concurrent_pulls_of_images_sharing_layers_all_succeed() {
    fixtures();
    let home = Home::new();
    let images = ["layered:oci", "layered:schema2", "busybox:latest", "busybox:zstd", "busybox:uncompressed", "multiarch:latest"];
    let children: Vec<_> = images
        .iter()
        .map(|image| {
            let mut command = home.command(&["pull", &registry(image)]);
            command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
            command.spawn().expect("spawn msb")
        })
        .collect();
    for (child, image) in children.into_iter().zip(images) {
        let output = child.wait_with_output().expect("wait");
        assert!(output.status.success(), "{image}: {}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(home.store().verify().expect("verify"), Vec::<String>::new());
    assert_eq!(home.entries("layers/sha256").len(), 5);
    assert!(home.entries("tmp").is_empty(), "{:?}", home.entries("tmp"));
    assert_same_tree("layered after a race", &Merged::mount(&home, &registry("layered:schema2")).root(), &umoci("layered-oci", "latest"));
}

#[test]
fn a_killed_pull_leaves_only_tmp_litter_that_the_next_pull_removes() {
    let home = Home::new();
    let server = FakeRegistry::start(Image::new(&vec![7u8; 256 << 10]), Serve::Stalls);
    let mut child = home.command(&["pull", &server.name()]).stderr(std::process::Stdio::null()).spawn().expect("spawn");
    // Wait until the layer is being written, then kill msb mid-blob.
    let deadline = Instant::now() + Duration::from_secs(20);
    while home.entries("tmp").len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(!home.entries("tmp").is_empty(), "the pull was killed while building");
    for dir in ["blobs/sha256", "layers/sha256", "images/sha256", "refs"] {
        assert!(home.entries(dir).is_empty(), "{dir} holds {:?}", home.entries(dir));
    }
    let good = FakeRegistry::start(Image::new(b"small"), Serve::Good);
    home.ok(&["pull", &good.name()]);
    assert!(home.entries("tmp").is_empty(), "litter left: {:?}", home.entries("tmp"));
}

#[test]
fn a_pull_of_a_present_image_still_removes_killed_pulls_litter() {
    let name = "127.0.0.1:1/msb-test/busybox:litter";
    let home = loaded_busybox(name);
    // What a pull killed after publishing its last entry leaves: that entry's lock file alone.
    std::fs::write(home.path().join("v1/tmp/1-2-3.lock"), "").expect("litter");
    home.ok(&["pull", name]);
    assert!(home.entries("tmp").is_empty(), "litter left: {:?}", home.entries("tmp"));
}
