//! `deploy/install-cni.sh`: the conflist it writes carries the newest CNI version every chained
//! plugin supports, up to what the runtime accepts; it is written by rename; it fails with one
//! clear line when the plugins have nothing in common. Fake plugins answer `VERSION` with chosen
//! lists; two tests use the real `weft-cni` and Debian's `portmap`. No root needed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use weft_lab::DEPLOY_DIR;

/// What the spec's versions are, by the releases that added them.
const UP_TO_1_0: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
const UP_TO_1_1: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A node's CNI directories, and a fake `weft-cni` to install.
struct Node {
    dir: tempfile::TempDir,
}

impl Node {
    /// A node whose `weft-cni` supports `weft` and whose CNI_BIN_DIR holds a `portmap` that
    /// supports `portmap` (none when `None`).
    fn new(weft: &[&str], portmap: Option<&[&str]>) -> Node {
        let node = Node {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(node.bin_dir()).unwrap();
        fake_plugin(&node.dir.path().join("weft-cni"), &version_reply(weft));
        if let Some(versions) = portmap {
            fake_plugin(&node.bin_dir().join("portmap"), &version_reply(versions));
        }
        node
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn conflist(&self) -> PathBuf {
        self.conf_dir().join("10-weft.conflist")
    }

    /// Run install-cni.sh with the fake weft-cni and `env`.
    fn install(&self, env: &[(&str, &str)]) -> Output {
        install(
            &self.dir.path().join("weft-cni"),
            &self.bin_dir(),
            &self.conf_dir(),
            env,
        )
    }

    /// The written conflist's cniVersion.
    fn version(&self) -> String {
        let list: Value = serde_json::from_slice(&std::fs::read(self.conflist()).unwrap()).unwrap();
        list["cniVersion"].as_str().unwrap().to_string()
    }

    /// Names in the conf dir other than the conflist (a temporary file left behind).
    fn strays(&self) -> Vec<String> {
        std::fs::read_dir(self.conf_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "10-weft.conflist")
            .collect()
    }
}

fn version_reply(versions: &[&str]) -> String {
    serde_json::json!({"cniVersion": versions.last(), "supportedVersions": versions}).to_string()
}

/// A plugin that prints `reply` (and, like a real one, reads no more than it needs).
fn fake_plugin(path: &Path, reply: &str) {
    let script =
        format!("#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 1\ncat <<'EOF'\n{reply}\nEOF\n");
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn install(weft_cni: &Path, bin_dir: &Path, conf_dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("sh");
    command
        .arg(Path::new(DEPLOY_DIR).join("install-cni.sh"))
        .arg(weft_cni)
        .arg(bin_dir)
        .arg(conf_dir)
        .env_remove("WEFT_CNI_VERSION_MAX")
        .env_remove("WEFT_CONFLIST")
        .env_remove("WEFT_DAEMON_SOCKET")
        .envs(env.iter().copied());
    command.output().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn the_newest_version_all_plugins_support_up_to_the_ceiling_is_written() {
    let old: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0"];
    /// (weft supports, portmap supports, WEFT_CNI_VERSION_MAX, written)
    type Case<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>, &'a str);
    let cases: [Case; 6] = [
        (UP_TO_1_1, UP_TO_1_0, None, "1.0.0"),
        (UP_TO_1_1, UP_TO_1_1, None, "1.0.0"),
        (UP_TO_1_1, UP_TO_1_1, Some("1.1.0"), "1.1.0"),
        (UP_TO_1_1, UP_TO_1_0, Some("1.1.0"), "1.0.0"),
        (UP_TO_1_1, old, None, "0.4.0"),
        (UP_TO_1_1, UP_TO_1_0, Some("0.3.5"), "0.3.1"),
    ];
    for (weft, portmap, ceiling, expected) in cases {
        let node = Node::new(weft, Some(portmap));
        let env: Vec<(&str, &str)> = ceiling
            .map(|c| ("WEFT_CNI_VERSION_MAX", c))
            .into_iter()
            .collect();
        let out = node.install(&env);
        let case = format!("weft {weft:?}, portmap {portmap:?}, ceiling {ceiling:?}");
        assert!(out.status.success(), "{case}: {}", text(&out));
        assert_eq!(node.version(), expected, "{case}");
        assert!(
            text(&out).contains(&format!("cniVersion {expected}")),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn the_conflist_is_the_shipped_one_with_its_version_and_socket_and_replaced_by_rename() {
    let node = Node::new(UP_TO_1_1, Some(UP_TO_1_0));
    std::fs::create_dir_all(node.conf_dir()).unwrap();
    std::fs::write(node.conflist(), "{\"cniVersion\": \"0.3.1\"}").unwrap();
    let before = std::fs::metadata(node.conflist()).unwrap().ino();
    let out = node.install(&[("WEFT_DAEMON_SOCKET", "/var/run/weft-test/cni.sock")]);
    assert!(out.status.success(), "{}", text(&out));

    let meta = std::fs::metadata(node.conflist()).unwrap();
    assert_ne!(
        meta.ino(),
        before,
        "a new file renamed into place, not the old one rewritten"
    );
    assert_eq!(meta.mode() & 0o777, 0o644);
    assert_eq!(
        node.strays(),
        Vec::<String>::new(),
        "no temporary file left"
    );
    let weft = std::fs::metadata(node.bin_dir().join("weft")).unwrap();
    assert_eq!(weft.mode() & 0o777, 0o755);
    let bins: Vec<_> = std::fs::read_dir(node.bin_dir())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(bins.len(), 2, "weft and portmap, no temporary binary");

    let shipped = std::fs::read_to_string(Path::new(DEPLOY_DIR).join("10-weft.conflist")).unwrap();
    let mut expected: Value = serde_json::from_str(&shipped).unwrap();
    expected["plugins"][0]["daemonSocket"] = "/var/run/weft-test/cni.sock".into();
    let written: Value = serde_json::from_slice(&std::fs::read(node.conflist()).unwrap()).unwrap();
    assert_eq!(written, expected);
}

#[test]
fn no_common_version_fails_with_one_line_and_keeps_the_old_conflist() {
    let node = Node::new(&["1.0.0", "1.1.0"], Some(&["0.1.0", "0.2.0"]));
    std::fs::create_dir_all(node.conf_dir()).unwrap();
    std::fs::write(node.conflist(), "old").unwrap();
    let out = node.install(&[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert_eq!(
        stderr.trim(),
        "install-cni.sh: no CNI version is supported by every plugin and <= 1.0.0 \
         (WEFT_CNI_VERSION_MAX); weft: 1.0.0 1.1.0; portmap: 0.1.0 0.2.0"
    );
    assert_eq!(std::fs::read_to_string(node.conflist()).unwrap(), "old");
    assert_eq!(
        node.strays(),
        Vec::<String>::new(),
        "no temporary file left"
    );

    // Versions in common, all above the ceiling: the same failure.
    let node = Node::new(UP_TO_1_1, Some(&["1.1.0"]));
    let out = node.install(&[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("<= 1.0.0 (WEFT_CNI_VERSION_MAX); weft: 0.3.0"),
        "{}",
        text(&out)
    );
    assert!(!node.conflist().exists());
}

#[test]
fn a_missing_or_broken_plugin_or_a_bad_setting_is_one_clear_line() {
    let missing = Node::new(UP_TO_1_1, None);
    let broken = Node::new(UP_TO_1_1, None);
    fake_plugin(
        &broken.bin_dir().join("portmap"),
        "{\"cniVersion\": \"1.0.0\"}",
    );
    let failing = Node::new(UP_TO_1_1, None);
    let script = "#!/bin/sh\necho 'exec format error' >&2\nexit 1\n";
    std::fs::write(failing.bin_dir().join("portmap"), script).unwrap();
    let mode = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(failing.bin_dir().join("portmap"), mode).unwrap();
    let good = Node::new(UP_TO_1_1, Some(UP_TO_1_0));
    /// (node, environment, words of the error)
    type Case<'a> = (&'a Node, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (&missing, &[], "plugin portmap: not found in "),
        (
            &broken,
            &[],
            "/portmap: no supportedVersions in its VERSION reply: {\"cniVersion\"",
        ),
        (&failing, &[], "/portmap: VERSION failed: exec format error"),
        (
            &good,
            &[("WEFT_CNI_VERSION_MAX", "1.0")],
            "WEFT_CNI_VERSION_MAX=1.0 is not a version",
        ),
        (
            &good,
            &[("WEFT_DAEMON_SOCKET", "cni.sock")],
            "cni.sock is not an absolute path",
        ),
        (
            &good,
            &[("WEFT_CONFLIST", "/nowhere")],
            "/nowhere: no such conflist template",
        ),
    ];
    for (node, env, words) in cases {
        let out = node.install(env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{words}: should fail");
        assert_eq!(stderr.lines().count(), 1, "{words}: one line: {stderr}");
        assert!(
            stderr.starts_with("install-cni.sh: ") && stderr.contains(words),
            "{stderr}"
        );
        assert!(!node.conflist().exists(), "{words}: no conflist written");
    }
}

#[test]
fn weft_cni_and_debians_portmap_agree_on_1_0_0_and_weft_alone_on_1_1_0() {
    let weft_cni = weft_lab::procs::bin_path("weft-cni");
    let dir = tempfile::tempdir().unwrap();
    let (bin_dir, conf_dir) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink("/usr/lib/cni/portmap", bin_dir.join("portmap")).unwrap();
    let version = || {
        let list = std::fs::read(conf_dir.join("10-weft.conflist")).unwrap();
        serde_json::from_slice::<Value>(&list).unwrap()["cniVersion"].clone()
    };
    for ceiling in ["1.0.0", "1.1.0"] {
        let out = install(
            &weft_cni,
            &bin_dir,
            &conf_dir,
            &[("WEFT_CNI_VERSION_MAX", ceiling)],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(version(), "1.0.0", "Debian's portmap stops at 1.0.0");
    }
    // A conflist of weft alone, for a runtime that takes 1.1.0: weft still serves it.
    let alone = dir.path().join("weft-alone.conflist");
    let list =
        r#"{"cniVersion": "", "name": "weft", "plugins": [{"type": "weft", "daemonSocket": ""}]}"#;
    std::fs::write(&alone, list).unwrap();
    let env = [
        ("WEFT_CNI_VERSION_MAX", "1.1.0"),
        ("WEFT_CONFLIST", alone.to_str().unwrap()),
    ];
    let out = install(&weft_cni, &bin_dir, &conf_dir, &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(version(), "1.1.0");
}

#[test]
fn install_cni_sh_is_shellcheck_clean() {
    let script = Path::new(DEPLOY_DIR).join("install-cni.sh");
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .arg(&script)
        .output()
        .unwrap_or_else(|e| {
            panic!("shellcheck: {e}: install Debian's shellcheck (scripts/deps.sh does)")
        });
    assert!(out.status.success(), "{}", text(&out));
}
