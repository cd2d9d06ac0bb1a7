//! The kernel settings a node needs: forwarding for the pod families in use.
//!
//! [`desired`] says which settings weft keeps and [`diff`] which of them differ from what was
//! read; both are pure. [`enable_forwarding`] sets them at start and [`restore`] puts back any
//! that drifted, at every resync of the reconcile loop.

use std::io;

/// One kernel setting weft keeps: its file under `/proc/sys` and the value it must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub path: &'static str,
    pub value: &'static str,
}

/// A setting found holding another value: what was read (`None`: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub setting: Setting,
    pub observed: Option<String>,
}

/// The settings weft keeps for the pod families in use: forwarding for each. (Moving `accept_ra`
/// from 1 to 2 is a start-time adjustment, not kept.)
pub fn desired(ipv4: bool, ipv6: bool) -> Vec<Setting> {
    let mut settings = Vec::new();
    if ipv4 {
        settings.push(Setting {
            path: "/proc/sys/net/ipv4/ip_forward",
            value: "1",
        });
    }
    if ipv6 {
        settings.push(Setting {
            path: "/proc/sys/net/ipv6/conf/all/forwarding",
            value: "1",
        });
    }
    settings
}

/// The settings whose observed value (one per setting, in order; `None`: unreadable) differs from
/// the desired one; surrounding whitespace does not count.
pub fn diff(desired: &[Setting], observed: &[Option<String>]) -> Vec<Drift> {
    desired
        .iter()
        .zip(observed)
        .filter(|(setting, seen)| seen.as_deref().map(str::trim) != Some(setting.value))
        .map(|(setting, seen)| Drift {
            setting: *setting,
            observed: seen.as_deref().map(|v| v.trim().to_string()),
        })
        .collect()
}

/// Read each setting from the kernel.
pub fn observe(settings: &[Setting]) -> Vec<Option<String>> {
    settings
        .iter()
        .map(|s| std::fs::read_to_string(s.path).ok())
        .collect()
}

/// Read the settings and write back those that differ: the ones found different, each with the
/// result of its write.
pub fn restore(settings: &[Setting]) -> Vec<(Drift, io::Result<()>)> {
    diff(settings, &observe(settings))
        .into_iter()
        .map(|drift| {
            let written = std::fs::write(drift.setting.path, drift.setting.value);
            (drift, written)
        })
        .collect()
}

/// Turn on forwarding in this (the node's) namespace for the pod families in use: pods are
/// routed, not bridged. With IPv6 forwarding on, the kernel ignores router advertisements on
/// interfaces with `accept_ra=1`; those are moved to `accept_ra=2` ("accept even when
/// forwarding") so an underlay configured by SLAAC keeps its addresses and default route.
/// Returns the interfaces moved.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> io::Result<Vec<String>> {
    let mut kept_ra = Vec::new();
    if ipv6 {
        for entry in std::fs::read_dir("/proc/sys/net/ipv6/conf")?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `default` too: an interface created later inherits it.
            if name == "all" || name == "lo" {
                continue;
            }
            let accept_ra = entry.path().join("accept_ra");
            if std::fs::read_to_string(&accept_ra).is_ok_and(|v| v.trim() == "1") {
                std::fs::write(&accept_ra, "2")?;
                kept_ra.push(name);
            }
        }
    }
    for setting in desired(ipv4, ipv6) {
        std::fs::write(setting.path, setting.value)?;
    }
    Ok(kept_ra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "/proc/sys/net/ipv4/ip_forward";
    const V6: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

    fn paths(settings: &[Setting]) -> Vec<&str> {
        settings.iter().map(|s| s.path).collect()
    }

    #[test]
    fn forwarding_is_kept_for_each_family_in_use() {
        assert_eq!(paths(&desired(true, true)), [V4, V6]);
        assert_eq!(paths(&desired(true, false)), [V4]);
        assert_eq!(paths(&desired(false, true)), [V6]);
        assert!(desired(false, false).is_empty());
        assert!(desired(true, true).iter().all(|s| s.value == "1"));
    }

    #[test]
    fn only_settings_holding_another_value_drifted() {
        let want = desired(true, true);
        let seen = |a: Option<&str>, b: Option<&str>| [a.map(String::from), b.map(String::from)];
        assert!(diff(&want, &seen(Some("1\n"), Some("1\n"))).is_empty());
        let drifted = diff(&want, &seen(Some("0\n"), Some("1\n")));
        assert_eq!(
            drifted,
            [Drift {
                setting: want[0],
                observed: Some("0".into())
            }]
        );
        let drifted = diff(&want, &seen(Some("1"), None));
        assert_eq!(drifted.len(), 1);
        assert_eq!((drifted[0].setting.path, &drifted[0].observed), (V6, &None));
        assert_eq!(diff(&want, &seen(Some("0"), Some("0"))).len(), 2);
    }
}
