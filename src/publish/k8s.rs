//! A Kubernetes Pod, or Deployment, that runs a published sandbox image.
//!
//! The image already carries how the sandbox starts (entrypoint, command, workdir, user, env), so
//! the manifest adds only what belongs to the cluster: the image reference (pinned by digest when
//! msb pushed it), the sandbox's cpus and memory as requests and limits (equal, so the Pod is
//! Guaranteed, as a microVM's size is fixed), its env, listed where people look for it, and the
//! runtime class (`kata`, crun's `krun` handler...) that gives it a VM.

use crate::manifest::SandboxConfig;

use super::yaml::Node;

/// What the cluster side asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sOptions {
    /// The image, as the cluster pulls it.
    pub image: String,
    pub runtime_class: Option<String>,
    /// A Deployment of this many replicas; a single Pod when `None`.
    pub replicas: Option<u32>,
}

/// The object for sandbox `name`.
pub fn manifest(name: &str, sandbox: &SandboxConfig, options: &K8sOptions) -> Node {
    let object_name = object_name(name);
    let labels = Node::map([
        ("app.kubernetes.io/name", Node::str(&object_name)),
        ("app.kubernetes.io/managed-by", Node::str("msb")),
    ]);
    let mut container = vec![("name", Node::str(&object_name)), ("image", Node::str(&options.image))];
    if !sandbox.env.is_empty() {
        let env = sandbox
            .env
            .iter()
            .map(|(key, value)| Node::map([("name", Node::str(key.as_str())), ("value", Node::str(value))]))
            .collect();
        container.push(("env", Node::List(env)));
    }
    let mut amounts = Vec::new();
    if let Some(cpus) = sandbox.cpus {
        amounts.push(("cpu", Node::str(cpus.to_string())));
    }
    if let Some(memory) = &sandbox.memory {
        amounts.push(("memory", Node::str(quantity(memory.bytes()))));
    }
    if !amounts.is_empty() {
        let amounts = Node::map(amounts);
        container.push(("resources", Node::map([("requests", amounts.clone()), ("limits", amounts)])));
    }
    let mut pod_spec = Vec::new();
    if let Some(class) = &options.runtime_class {
        pod_spec.push(("runtimeClassName", Node::str(class)));
    }
    pod_spec.push(("containers", Node::List(vec![Node::map(container)])));
    let pod_spec = Node::map(pod_spec);
    let metadata = Node::map([("name", Node::str(&object_name)), ("labels", labels.clone())]);

    match options.replicas {
        None => Node::map([
            ("apiVersion", Node::str("v1")),
            ("kind", Node::str("Pod")),
            ("metadata", metadata),
            ("spec", pod_spec),
        ]),
        Some(replicas) => {
            let selector = Node::map([("app.kubernetes.io/name", Node::str(&object_name))]);
            Node::map([
                ("apiVersion", Node::str("apps/v1")),
                ("kind", Node::str("Deployment")),
                ("metadata", metadata),
                (
                    "spec",
                    Node::map([
                        ("replicas", Node::Int(i64::from(replicas))),
                        ("selector", Node::map([("matchLabels", selector)])),
                        ("template", Node::map([("metadata", Node::map([("labels", labels)])), ("spec", pod_spec)])),
                    ]),
                ),
            ])
        }
    }
}

/// A sandbox name as a Kubernetes object and container name (an RFC 1123 label): `_` and `.`,
/// which sandbox names allow, become `-`; at most 63 characters, ending alphanumeric.
pub fn object_name(name: &str) -> String {
    let mapped: String = name.chars().map(|c| if c == '_' || c == '.' { '-' } else { c.to_ascii_lowercase() }).take(63).collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() { "sandbox".to_owned() } else { trimmed.to_owned() }
}

/// Bytes as a Kubernetes quantity, in the largest binary (then decimal) unit that divides them.
pub fn quantity(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "Ti"),
        (1 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Whether `class` can name a RuntimeClass (an RFC 1123 subdomain).
pub fn valid_runtime_class(class: &str) -> bool {
    !class.is_empty()
        && class.len() <= 253
        && class.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(toml: &str) -> SandboxConfig {
        toml::from_str(&format!("image = \"alpine\"\n{toml}")).expect("sandbox config")
    }

    #[test]
    fn a_pod_has_resources_env_and_the_runtime_class() {
        let config = sandbox("cpus = 2\nmemory = \"512MiB\"\nenv = { DEBUG = \"1\", MODE = \"yes\" }");
        let options = K8sOptions { image: "r.example/app@sha256:ab".into(), runtime_class: Some("kata".into()), replicas: None };
        let yaml = manifest("my_worker", &config, &options).to_yaml();
        assert_eq!(
            yaml,
            r#"apiVersion: v1
kind: Pod
metadata:
  name: my-worker
  labels:
    app.kubernetes.io/name: my-worker
    app.kubernetes.io/managed-by: msb
spec:
  runtimeClassName: kata
  containers:
  - name: my-worker
    image: r.example/app@sha256:ab
    env:
    - name: DEBUG
      value: "1"
    - name: MODE
      value: "yes"
    resources:
      requests:
        cpu: "2"
        memory: "512Mi"
      limits:
        cpu: "2"
        memory: "512Mi"
"#
        );
    }

    #[test]
    fn replicas_make_a_deployment() {
        let options = K8sOptions { image: "app:1".into(), runtime_class: None, replicas: Some(3) };
        let json: serde_json::Value = serde_json::from_str(&manifest("w", &sandbox(""), &options).to_json()).expect("json");
        assert_eq!(json["kind"], "Deployment");
        assert_eq!(json["spec"]["replicas"], 3);
        assert_eq!(json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "w");
        assert_eq!(json["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "w");
        assert!(json["spec"]["template"]["spec"].get("runtimeClassName").is_none());
        assert!(json["spec"]["template"]["spec"]["containers"][0].get("resources").is_none());
    }

    #[test]
    fn quantities_and_names() {
        assert_eq!(quantity(512 << 20), "512Mi");
        assert_eq!(quantity(2 << 30), "2Gi");
        assert_eq!(quantity(500_000_000), "500M");
        assert_eq!(quantity(1_500), "1500");
        assert_eq!(object_name("a.b_c"), "a-b-c");
        assert!(valid_runtime_class("kata-qemu") && valid_runtime_class("a.b"));
        assert!(!valid_runtime_class("Kata") && !valid_runtime_class("-a") && !valid_runtime_class(""));
    }
}
