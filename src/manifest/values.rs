//! The scalar values of a Sandboxfile, validated at the edge.
//!
//! Each newtype has one `parse` that is the source of truth: `Deserialize` calls it (so a value
//! that exists is valid), the loader's checks call it (so every bad value is reported, not just the
//! first), and its JSON Schema `pattern` mirrors it for editors (a unit test keeps the two in step).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reference::ImageSource;

/// Why a value was refused, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    pub message: String,
    pub help: Option<String>,
}

impl ValueError {
    fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        ValueError { message: message.into(), help: Some(help.into()) }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Declares a string newtype whose `Deserialize` goes through `parse` and whose schema is a
/// string with the given pattern.
macro_rules! string_value {
    ($(#[$doc:meta])* $name:ident, $description:expr, $pattern:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The value as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The schema of the value alone, for `propertyNames` and for tests.
            pub fn name_schema() -> Schema {
                string_schema($description, $pattern)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                $name::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                string_schema($description, $pattern)
            }
        }
    };
}

fn string_schema(description: &str, pattern: Option<&str>) -> Schema {
    match pattern {
        Some(pattern) => json_schema!({
            "type": "string",
            "description": description,
            "pattern": pattern,
        }),
        None => json_schema!({
            "type": "string",
            "description": description,
            "minLength": 1,
        }),
    }
}

/// One path component that is a real name: not empty, not `.` or `..`, no `/` or NUL. Written
/// without look-ahead so that every JSON Schema engine (ECMA, Python `re`, Rust) reads it alike.
macro_rules! component {
    () => {
        r"([^/.\u0000][^/\u0000]*|\.[^/.\u0000][^/\u0000]*|\.\.[^/\u0000]+)"
    };
}

string_value!(
    /// An absolute, canonical path in the guest: no `.`, `..` or empty components, no NUL, not `/`.
    GuestPath,
    "An absolute, canonical path in the guest, such as `/etc/app.conf`: no `.`, `..` or empty parts, not `/`.",
    Some(concat!("^(/", component!(), ")+$"))
);

impl GuestPath {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        const HELP: &str = "write an absolute path without `.` or `..`, such as `/etc/app.conf`";
        if s.contains('\0') {
            return Err(ValueError::new("guest path contains a NUL byte", HELP));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(ValueError::new(format!("guest path `{s}` is not absolute"), HELP));
        };
        if rest.is_empty() {
            return Err(ValueError::new("guest path `/` is the root itself", HELP));
        }
        for part in rest.split('/') {
            let what = match part {
                "" => "an empty component (`//` or a trailing `/`)",
                "." => "a `.` component",
                ".." => "a `..` component",
                _ => continue,
            };
            return Err(ValueError::new(format!("guest path `{s}` has {what}"), HELP));
        }
        Ok(GuestPath(s.to_owned()))
    }

    /// The path's components, without the leading `/`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/')
    }
}

string_value!(
    /// A sandbox's name: used in commands (`msb exec NAME`), folder names and container ids.
    SandboxName,
    "A sandbox name: lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most 63 characters.",
    Some("^[a-z0-9][a-z0-9_.-]{0,62}$")
);

impl SandboxName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let help = "use lowercase letters, digits, `-`, `_` and `.`, such as `worker` or `api-1`";
        let mut chars = s.chars();
        let ok_first = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
        });
        if !ok_first || !ok_rest || s.len() > 63 {
            return Err(ValueError::new(format!("`{s}` is not a valid sandbox name"), help));
        }
        Ok(SandboxName(s.to_owned()))
    }
}

string_value!(
    /// A script's name, which is its file name under `/.msb/scripts/`.
    ScriptName,
    "A script name, which becomes its file name under `/.msb/scripts/`: not empty, no `/` or NUL, not `.` or `..`.",
    Some(concat!("^", component!(), "$"))
);

impl ScriptName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let help = "a script name is a file name, such as `setup` or `serve.sh`";
        let problem = if s.is_empty() {
            "script name is empty".to_owned()
        } else if s.contains('/') {
            format!("script name `{s}` contains `/`")
        } else if s.contains('\0') {
            "script name contains a NUL byte".to_owned()
        } else if s == "." || s == ".." {
            format!("script name `{s}` is not a file name")
        } else {
            return Ok(ScriptName(s.to_owned()));
        };
        Err(ValueError::new(problem, help))
    }
}

string_value!(
    /// An environment variable's name.
    EnvName,
    "An environment variable name: letters, digits and `_`, not starting with a digit.",
    Some("^[A-Za-z_][A-Za-z0-9_]*$")
);

impl EnvName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let mut chars = s.chars();
        let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ValueError::new(
                format!("`{s}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit, such as `RUST_LOG`",
            ));
        }
        Ok(EnvName(s.to_owned()))
    }
}

string_value!(
    /// Where a symlink points: any non-empty path without NUL, absolute or relative.
    LinkTarget,
    "Where the link points: a non-empty path, absolute or relative to the link's folder.",
    Some(r"^[^\u0000]+$")
);

impl LinkTarget {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let help = "write the path the link points to, such as `/usr/bin/python3` or `../lib`";
        if s.is_empty() {
            return Err(ValueError::new("symlink target is empty", help));
        }
        if s.contains('\0') {
            return Err(ValueError::new("symlink target contains a NUL byte", help));
        }
        Ok(LinkTarget(s.to_owned()))
    }
}

string_value!(
    /// An image reference as written; `parse` checks it with the image reference grammar.
    ImageName,
    "An image: `alpine:3.20`, `ghcr.io/org/app@sha256:…`, `oci:DIR[:TAG]`, `oci-archive:TAR`, `docker-archive:TAR` or `dir:ROOTFS`.",
    None
);

impl ImageName {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        match s.parse::<ImageSource>() {
            Ok(_) => Ok(ImageName(s.to_owned())),
            Err(err) => Err(ValueError {
                message: format!("`{s}` is not a valid image reference: {err}"),
                help: err.help(),
            }),
        }
    }

    /// The parsed source; always succeeds because the name was checked when it was made.
    pub fn source(&self) -> ImageSource {
        match self.0.parse() {
            Ok(source) => source,
            Err(_) => unreachable!("ImageName holds only references that parse"),
        }
    }
}

/// Octal permission bits, written as a string (`"0644"`) so that TOML's decimal integers cannot
/// be mistaken for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode(u32);

impl Mode {
    const PATTERN: &str = "^[0-7]{3,4}$";

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let valid = (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
        match u32::from_str_radix(s, 8) {
            Ok(bits) if valid => Ok(Mode(bits)),
            _ => Err(ValueError::new(
                format!("`{s}` is not an octal mode"),
                "write 3 or 4 octal digits in quotes, such as `mode = \"0644\"` or `\"4755\"`",
            )),
        }
    }

    /// Builds a mode from bits, refusing anything above `0o7777`.
    pub fn from_bits(bits: u32) -> Result<Self, ValueError> {
        Mode::parse(&format!("{bits:04o}"))
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Mode::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema("Octal permission bits in quotes, such as `\"0644\"` or `\"4755\"`.", Some(Mode::PATTERN))
    }
}

/// A memory size with a unit, such as `512MiB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memory {
    written: String,
    bytes: u64,
}

impl Memory {
    const PATTERN: &str = r"^[1-9][0-9]{0,11} ?(KiB|MiB|GiB|TiB|KB|MB|GB|TB|K|M|G|T)$";
    /// Below this no kernel or init of ours starts; refusing it early beats a confusing boot failure.
    pub const MIN_BYTES: u64 = 16 << 20;

    pub fn parse(s: &str) -> Result<Self, ValueError> {
        let help = "write a whole number and a unit, such as `512MiB` or `2GiB` (K, M, G, T are powers of 1024)";
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = s.split_at(digits);
        let multiplier: u64 = match unit.trim_start_matches(' ') {
            "KiB" | "K" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(ValueError::new(format!("`{s}` is not a size with a unit"), help)),
        };
        let number = match number.parse::<u64>() {
            Ok(n) if !number.starts_with('0') && number.len() <= 12 && unit.len() <= 4 => n,
            _ => return Err(ValueError::new(format!("`{s}` is not a size with a unit"), help)),
        };
        match number.checked_mul(multiplier) {
            Some(bytes) if bytes >= Memory::MIN_BYTES => Ok(Memory { written: s.to_owned(), bytes }),
            Some(_) => Err(ValueError::new(format!("memory `{s}` is below the minimum of 16MiB"), help)),
            None => Err(ValueError::new(format!("memory `{s}` is too large"), help)),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.written)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Memory::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Memory {
    fn schema_name() -> Cow<'static, str> {
        "Memory".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        string_schema(
            "A size with a unit: `512MiB`, `2GiB` (K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB/TB of 1000). At least 16MiB.",
            Some(Memory::PATTERN),
        )
    }
}

/// What runs as PID 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Init {
    /// msb's agent.
    #[default]
    Agent,
    /// The image's own init, found among the usual places.
    Auto,
    /// An init at this path in the image.
    Path(GuestPath),
}

impl Init {
    pub fn parse(s: &str) -> Result<Self, ValueError> {
        match s {
            "agent" => Ok(Init::Agent),
            "auto" => Ok(Init::Auto),
            path if path.starts_with('/') => GuestPath::parse(path).map(Init::Path),
            other => Err(ValueError::new(
                format!("`{other}` is not an init mode"),
                "use `agent`, `auto`, or an absolute path such as `/sbin/init`",
            )),
        }
    }

    pub(super) fn is_default(&self) -> bool {
        *self == Init::Agent
    }

    fn as_str(&self) -> &str {
        match self {
            Init::Agent => "agent",
            Init::Auto => "auto",
            Init::Path(path) => path.as_str(),
        }
    }
}

impl Serialize for Init {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Init {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Init::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Init {
    fn schema_name() -> Cow<'static, str> {
        "Init".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let path = generator.subschema_for::<GuestPath>();
        json_schema!({
            "description": "`agent` (msb's agent is PID 1), `auto` (the image's init) or an absolute path to an init.",
            "anyOf": [
                { "type": "string", "enum": ["agent", "auto"] },
                path,
            ],
        })
    }
}

/// Which backend boots a sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `krun` where hardware KVM can run guests, else `oci`; msb says which and why.
    #[default]
    Auto,
    /// A libkrun microVM.
    Krun,
    /// Linux namespaces through crun.
    Oci,
}

impl Runtime {
    pub(super) fn is_default(&self) -> bool {
        *self == Runtime::Auto
    }
}

/// The sandbox's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A network namespace of its own with only loopback: nothing reaches out, nothing reaches in.
    #[default]
    Private,
    /// The host's network, shared (servers in the sandbox listen on the host's addresses).
    Host,
}

impl Network {
    pub(super) fn is_default(&self) -> bool {
        *self == Network::Private
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema pattern must accept exactly what `parse` accepts, or editors and msb disagree.
    fn assert_schema_agrees(schema: Schema, parse: impl Fn(&str) -> bool, samples: &[&str]) {
        let validator = jsonschema::validator_for(schema.as_value()).expect("schema compiles");
        for sample in samples {
            let by_schema = validator.is_valid(&serde_json::Value::from(*sample));
            assert_eq!(by_schema, parse(sample), "schema and parse disagree on {sample:?}");
        }
    }

    #[test]
    fn guest_path_pattern_matches_parse() {
        let samples = [
            "/etc", "/etc/app.conf", "/.msb", "/..x", "/a/...", "/a/.b", "/", "", "etc", "./etc",
            "/etc/", "//etc", "/a//b", "/a/./b", "/a/../b", "/..", "/.", "/a\0b", "/ spaced name",
        ];
        assert_schema_agrees(GuestPath::name_schema(), |s| GuestPath::parse(s).is_ok(), &samples);
    }

    #[test]
    fn script_name_pattern_matches_parse() {
        let samples = ["setup", "serve.sh", ".hidden", "..x", "", ".", "..", "a/b", "a\0", "with space"];
        assert_schema_agrees(ScriptName::name_schema(), |s| ScriptName::parse(s).is_ok(), &samples);
    }

    #[test]
    fn sandbox_name_pattern_matches_parse() {
        let samples = ["worker", "api-1", "a.b_c", "9", "", "Worker", "-x", "a b", &"a".repeat(63), &"a".repeat(64)];
        assert_schema_agrees(SandboxName::name_schema(), |s| SandboxName::parse(s).is_ok(), &samples);
    }

    #[test]
    fn env_name_pattern_matches_parse() {
        let samples = ["PATH", "_x", "RUST_LOG2", "", "2X", "A-B", "É"];
        assert_schema_agrees(EnvName::name_schema(), |s| EnvName::parse(s).is_ok(), &samples);
    }

    #[test]
    fn mode_pattern_matches_parse() {
        let samples = ["644", "0644", "4755", "7777", "0", "64", "10000", "0999", "rw-r--r--", "0o644"];
        assert_schema_agrees(Mode::json_schema(&mut SchemaGenerator::default()), |s| Mode::parse(s).is_ok(), &samples);
    }

    #[test]
    fn memory_pattern_matches_parse_apart_from_the_minimum() {
        let samples = ["512MiB", "2GiB", "1 GiB", "64M", "100MB", "0MiB", "512", "512mb", "1.5GiB", "MiB", "999999999999T"];
        // The schema cannot bound the product of number and unit; compare shape only.
        let shape_ok = |s: &str| match Memory::parse(s) {
            Ok(_) => true,
            Err(e) => e.message.contains("below the minimum") || e.message.contains("too large"),
        };
        assert_schema_agrees(Memory::json_schema(&mut SchemaGenerator::default()), shape_ok, &samples);
    }

    #[test]
    fn memory_sizes_parse_to_bytes() {
        for (written, bytes) in [("512MiB", 512 << 20), ("2G", 2 << 30), ("100MB", 100_000_000), ("1 GiB", 1 << 30)] {
            assert_eq!(Memory::parse(written).map(|m| m.bytes()), Ok(bytes), "{written}");
        }
        assert!(Memory::parse("8MiB").unwrap_err().message.contains("minimum"));
    }

    #[test]
    fn modes_round_trip_as_four_octal_digits() {
        let mode = Mode::parse("644").unwrap();
        assert_eq!(mode.bits(), 0o644);
        assert_eq!(serde_json::to_string(&mode).unwrap(), "\"0644\"");
        assert!(Mode::from_bits(0o10000).is_err());
    }

    #[test]
    fn init_accepts_modes_and_absolute_paths_only() {
        assert_eq!(Init::parse("auto"), Ok(Init::Auto));
        assert!(matches!(Init::parse("/sbin/init"), Ok(Init::Path(_))));
        assert!(Init::parse("sbin/init").is_err());
        assert!(Init::parse("/sbin/../init").is_err());
    }
}
