//! `weft-lab down NAME` removes exactly that lab; `--all` every lab of its record directory; with
//! neither it lists the labs and removes nothing. Each test detaches its labs into a record
//! directory of its own (`WEFT_LAB_RECORD_DIR` for the binary), so it never touches labs that
//! other users or test runs started; a guard removes its labs even when an assertion fails.
//!
//! Run (root): `cargo test -p weft-lab --test lab_down`.

use std::path::{Path, PathBuf};
use std::process::Output;

use weft_lab::lab::{self, Lab, LabConfig};
use weft_lab::netns::run;
use weft_lab::procs::bin_path;

/// What a detached lab was, seen from outside.
struct Detached {
    name: String,
    /// Each weftd's pid and the node directory its command line names.
    daemons: Vec<(u64, String)>,
    node_netns: String,
    pod_v4: String,
}

/// The test's record directory; dropping it removes every lab recorded there (only this test's).
struct Labs {
    records: tempfile::TempDir,
}

impl Drop for Labs {
    fn drop(&mut self) {
        if let Err(e) = lab::down_all(self.records.path()) {
            eprintln!("cleanup: {e}");
        }
    }
}

impl Labs {
    fn new() -> Labs {
        Labs {
            records: tempfile::Builder::new()
                .prefix("weft-lab-records-")
                .tempdir()
                .expect("record dir"),
        }
    }

    /// Bring up a lab of one node with one pod and detach it into this record directory.
    fn up(&self) -> Detached {
        let lab = Lab::up(LabConfig {
            nodes: 1,
            pods_per_node: 1,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let detached = Detached {
            name: lab.prefix.clone(),
            daemons: lab
                .nodes
                .iter()
                .map(|n| {
                    let pid = n.daemon.as_ref().expect("weftd").pid();
                    (u64::from(pid), n.dir.display().to_string())
                })
                .collect(),
            node_netns: lab.nodes[0].netns.name().to_string(),
            pod_v4: lab.pods[0].v4.expect("pod IPv4").to_string(),
        };
        let record = lab
            .detach_to(self.records.path())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(record, self.record(&detached.name));
        detached
    }

    fn record(&self, name: &str) -> PathBuf {
        self.records.path().join(format!("{name}.json"))
    }

    /// Run the real `weft-lab down ARGS…` against this record directory.
    fn down(&self, args: &[&str]) -> Output {
        std::process::Command::new(bin_path("weft-lab"))
            .arg("down")
            .args(args)
            .env("WEFT_LAB_RECORD_DIR", self.records.path())
            .output()
            .expect("run weft-lab down")
    }
}

/// Whether the weftd still runs (a killed child of this test stays a zombie, with no cmdline).
fn running(pid: u64, dir: &str) -> bool {
    lab::process_names(pid, dir)
}

fn namespaces(name: &str) -> Vec<String> {
    lab::lab_namespaces(name).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_intact(labs: &Labs, lab: &Detached) {
    assert!(labs.record(&lab.name).exists(), "{}'s record", lab.name);
    assert_eq!(namespaces(&lab.name).len(), 4, "{}'s namespaces", lab.name);
    for (pid, dir) in &lab.daemons {
        assert!(running(*pid, dir), "{}'s weftd {pid} runs", lab.name);
    }
    let dir = std::env::temp_dir().join(format!("weft-lab-{}", lab.name));
    assert!(dir.is_dir(), "{} is there", dir.display());
    let ping = run(&[
        "ip",
        "netns",
        "exec",
        &lab.node_netns,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &lab.pod_v4,
    ]);
    assert!(
        ping.is_ok(),
        "{}'s pod answers its node: {ping:?}",
        lab.name
    );
}

fn assert_removed(labs: &Labs, lab: &Detached) {
    assert!(!labs.record(&lab.name).exists(), "{}'s record", lab.name);
    assert_eq!(namespaces(&lab.name), Vec::<String>::new());
    for (pid, dir) in &lab.daemons {
        // SIGKILL is delivered at once; the zombie it leaves has no command line.
        let gone = weft_lab::procs::wait_for(std::time::Duration::from_secs(5), || {
            (!running(*pid, dir)).then_some(())
        });
        assert!(gone.is_some(), "{}'s weftd {pid} still runs", lab.name);
    }
    let dir = std::env::temp_dir().join(format!("weft-lab-{}", lab.name));
    assert!(!dir.exists(), "{} is removed", dir.display());
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn down_name_removes_that_lab_only() {
    let labs = Labs::new();
    let (one, two) = (labs.up(), labs.up());
    assert_intact(&labs, &one);
    assert_intact(&labs, &two);

    let out = labs.down(&[&one.name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("removed lab {}\n", one.name));
    assert_removed(&labs, &one);
    assert_intact(&labs, &two);

    let out = labs.down(&["no-such-lab"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "weft-lab: no lab named \"no-such-lab\"; labs: {}\n",
            two.name
        )
    );
    let out = labs.down(&["../etc/passwd"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no lab named"));

    let out = labs.down(&[]);
    assert!(!out.status.success(), "down with no name must fail");
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("labs: {}", two.name)), "{stdout}");
    assert!(stdout.contains("weft-lab down NAME"), "{stdout}");
    assert!(stdout.contains("weft-lab down --all"), "{stdout}");
    assert_intact(&labs, &two);

    let out = labs.down(&[&two.name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_removed(&labs, &two);

    let out = labs.down(&[]);
    assert!(!out.status.success());
    assert!(text(&out.stdout).contains("no lab is running"));
}

#[test]
fn down_all_removes_every_lab_of_its_record_directory() {
    let labs = Labs::new();
    let (one, two) = (labs.up(), labs.up());
    let out = labs.down(&["--all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut names = [one.name.as_str(), two.name.as_str()];
    names.sort();
    assert_eq!(
        text(&out.stdout),
        format!("removed lab {}\nremoved lab {}\n", names[0], names[1])
    );
    assert_removed(&labs, &one);
    assert_removed(&labs, &two);
    assert_eq!(
        lab::lab_names(labs.records.path()).unwrap(),
        Vec::<String>::new()
    );
}

/// A record that names something a lab does not make is refused, not followed.
#[test]
fn down_leaves_what_a_record_wrongly_names() {
    let labs = Labs::new();
    let victim = tempfile::tempdir().expect("dir");
    let name = "wbogus1";
    let record = serde_json::json!({
        "prefix": name,
        "dirs": [victim.path()],
        "processes": [{"pid": std::process::id(), "names": "/nonexistent-weft-dir"}],
    });
    std::fs::write(labs.record(name), record.to_string()).unwrap();
    let out = labs.down(&[name]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a lab's directory"));
    assert!(victim.path().is_dir());
    assert!(!Path::new(&labs.record(name)).exists());
}
