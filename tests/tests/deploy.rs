//! The shipped configuration parses the way a runtime will hand it to the plugin.

use serde_json::Value;
use weft_proto::cni::NetConf;

#[test]
fn the_shipped_conflist_gives_the_weft_plugin_a_valid_netconf() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/10-weft.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut weft = list["plugins"][0].clone();
    // libcni injects the list's name and version into each plugin's configuration.
    weft["name"] = list["name"].clone();
    weft["cniVersion"] = list["cniVersion"].clone();
    let conf = NetConf::from_value(&weft).expect("valid weft netconf");
    assert_eq!(conf.plugin_type, "weft");
    assert_eq!(conf.daemon_socket, "/run/weft/cni.sock");
    assert_eq!(list["plugins"][1]["type"], "portmap");
    // What a runtime and every plugin of the chain accept today (Debian 12's containerd 1.6 and
    // reference plugins stop at 1.0.0); install-cni.sh asks the plugins and may write another.
    assert_eq!(list["cniVersion"], "1.0.0");
}
