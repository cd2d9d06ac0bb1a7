//! The lab's error type: what failed, with the command line, path, or log that explains it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything the lab library can fail at.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran and exited unsuccessfully (an `ip` call, a command in a namespace).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A program could not be started at all.
    #[error("`{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a file or directory.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Something the lab waits for did not happen in time; `log` is the log of the process that
    /// should have done it, when there is one.
    #[error("timed out after {after:?} waiting for {what}{}", log_suffix(log))]
    Timeout {
        what: String,
        after: Duration,
        log: String,
    },
    /// A CNI plugin call made by the lab (not one a test makes to see it fail) failed.
    #[error("CNI {command} of {pod} through {}: {stdout} {stderr}", plugin.display())]
    Plugin {
        plugin: PathBuf,
        command: String,
        pod: String,
        /// The plugin's standard output: a CNI error object, as JSON.
        stdout: String,
        stderr: String,
    },
    /// Making a test certificate (the throwaway CA of [`crate::pki`]).
    #[error("test PKI: {0}")]
    Pki(String),
    /// A workspace binary (`weftd`, `weft-cni`, `weft-lab`) that could not be built or found.
    #[error("{name}: {reason}")]
    Binary { name: String, reason: String },
    /// A program or file a test needs from a Debian package that is not installed.
    #[error("{program} {problem}: install Debian's {package} (scripts/deps.sh does)")]
    NotInstalled {
        program: String,
        /// What is wrong with it: `is missing`, `is linked dynamically`.
        problem: String,
        package: String,
    },
    /// A record of a detached lab (`/run/weft-lab/PREFIX.json`) that does not parse, or names
    /// something a lab does not make.
    #[error("{}: not a lab record: {reason}", path.display())]
    Record { path: PathBuf, reason: String },
    /// `weft-lab down NAME` with a NAME no record has; `labs` are the labs that exist.
    #[error("no lab named {name:?}; {}", lab_list(labs))]
    UnknownLab { name: String, labs: Vec<String> },
    /// Entering a network namespace failed.
    #[error("enter network namespace {netns}: {source}")]
    Netns {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    /// A piece needed for a Kubernetes API server (the script, kube-apiserver, etcd, kubectl, …)
    /// was not found; it names where each was looked for.
    #[error(transparent)]
    K8sMissing(#[from] crate::k8s::Missing),
    /// A test API server that misbehaves (its work directory names it).
    #[error("API server in {}: {reason}", workdir.display())]
    ApiServer { workdir: PathBuf, reason: String },
    /// A relay into a network namespace could not listen or run.
    #[error("relay to 127.0.0.1:{port} inside {netns}: {source}")]
    Relay {
        netns: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// A thread doing lab work panicked.
    #[error("{0} panicked")]
    Panicked(String),
    /// Independent steps that all ran, several of which failed (`weft-lab down`).
    #[error("{}", join(.0))]
    Several(Vec<LabError>),
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; its log:\n{log}")
    }
}

/// `labs: a, b` or `no lab is running`.
pub fn lab_list(labs: &[String]) -> String {
    if labs.is_empty() {
        "no lab is running".to_string()
    } else {
        format!("labs: {}", labs.join(", "))
    }
}

fn join(errors: &[LabError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl LabError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io { path, source }
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_what_failed() {
        let timeout = LabError::Timeout {
            what: "node-1's weftd to open /tmp/x/cni.sock".into(),
            after: Duration::from_secs(20),
            log: "boom".into(),
        };
        assert_eq!(
            timeout.to_string(),
            "timed out after 20s waiting for node-1's weftd to open /tmp/x/cni.sock; its log:\nboom"
        );
        let io = LabError::io("/nowhere")(std::io::Error::other("gone"));
        assert_eq!(io.to_string(), "/nowhere: gone");
        let several = LabError::Several(vec![
            LabError::Panicked("probe".into()),
            LabError::Binary {
                name: "weftd".into(),
                reason: "missing".into(),
            },
        ]);
        assert_eq!(several.to_string(), "probe panicked; weftd: missing");
        let unknown = LabError::UnknownLab {
            name: "w1".into(),
            labs: vec!["w2".into(), "w3".into()],
        };
        assert_eq!(unknown.to_string(), "no lab named \"w1\"; labs: w2, w3");
        let none = LabError::UnknownLab {
            name: "w1".into(),
            labs: vec![],
        };
        assert_eq!(none.to_string(), "no lab named \"w1\"; no lab is running");
    }
}
