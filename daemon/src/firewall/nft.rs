//! Reading and writing weft's table through the `nft` binary and its JSON interface (libnftables'
//! stable, atomic interface to the kernel's nftables; `nft` ships with the daemon's image). Every
//! function here blocks on a child process: call it from `spawn_blocking`. `nft` runs in the
//! network namespace of the calling thread.
//!
//! Batches are the `nftables` crate's typed values, serialised and piped to `nft -j -f -` as the
//! crate's `helper::apply_ruleset` does; weft runs the command itself only to keep nft's standard
//! error in the error it returns (the crate's helper leaves it on the daemon's own stderr).
//! Listings are read one object at a time with the crate's types, so that an object they cannot
//! read (a foreign chain with a newer nft's fields, say) costs only that object.

use std::io::Write;
use std::process::{Command, Stdio};

use nftables::schema::{NfListObject, Nftables};
use nftables::types::{NfChainPolicy, NfHook};
use serde::Deserialize;

use super::{removal, FirewallOp, Observed, TABLE};

/// A failure to run `nft` or to read what it printed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started or fed (not installed, say).
    #[error("run nft: {0}")]
    Spawn(#[source] std::io::Error),
    /// `nft` exited with an error: the arguments, and its standard error.
    #[error("`nft {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    /// `nft` printed something that is not an nftables JSON document.
    #[error("`nft {args}` printed no nftables JSON document: {source}")]
    Json {
        args: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Run `nft ARGS` with `input` on its standard input; its standard output.
fn run(args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        .env_remove(crate::config::ETCD_PASSWORD_VAR)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input).map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(NftError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// The objects of an nft JSON listing (`{"nftables": [...]}`) that nftables' types read, and the
/// reasons the others could not be read. Errs only when the text is no such document.
pub fn parse_objects(
    json: &[u8],
) -> Result<(Vec<NfListObject<'static>>, Vec<String>), serde_json::Error> {
    #[derive(Deserialize)]
    struct Listing {
        nftables: Vec<serde_json::Value>,
    }
    let listing: Listing = serde_json::from_slice(json)?;
    let mut objects = Vec::new();
    let mut unreadable = Vec::new();
    for value in listing.nftables {
        let text = value.to_string();
        match serde_json::from_value::<NfListObject<'static>>(value) {
            Ok(object) => objects.push(object),
            Err(e) => unreadable.push(format!("{e}: {text}")),
        }
    }
    Ok((objects, unreadable))
}

/// Read weft's table from the kernel: one `nft -j list table inet weft`.
pub fn observe() -> Result<Observed, NftError> {
    let args = ["-j", "list", "table", "inet", TABLE];
    let output = match run(&args, None) {
        Ok(output) => output,
        // nft says ENOENT's text for a table that does not exist (in every version so far).
        Err(NftError::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            return Ok(Observed::Absent)
        }
        Err(e) => return Err(e),
    };
    let (objects, unreadable) = parse_objects(&output).map_err(|source| NftError::Json {
        args: args.join(" "),
        source,
    })?;
    Ok(match unreadable.into_iter().next() {
        Some(why) => Observed::Unreadable(why),
        None => Observed::summarise(&objects),
    })
}

/// Apply a batch in one nft transaction (`nft -j -f -`).
fn submit(batch: &Nftables<'_>) -> Result<(), NftError> {
    let json = serde_json::to_vec(batch).expect("nftables batches always serialise");
    run(&["-j", "-f", "-"], Some(&json)).map(drop)
}

/// Carry out `op` in one nft transaction.
pub fn apply(op: &FirewallOp) -> Result<(), NftError> {
    submit(&op.batch())
}

/// Remove weft's table, if there is one (`weftd cleanup`). Nothing else is touched.
pub fn remove() -> Result<(), NftError> {
    submit(&removal())
}

/// Run `work` (one of the functions above) on tokio's blocking pool; a panic there is reported
/// as [`NftError::Spawn`].
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NftError> + Send + 'static,
) -> Result<T, NftError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(NftError::Spawn(std::io::Error::other(e))))
}

/// The chains of every table (`nft -j list chains`, read only), leaving out any that nftables'
/// types cannot read.
pub fn list_chains() -> Result<Vec<NfListObject<'static>>, NftError> {
    let args = ["-j", "list", "chains"];
    let output = run(&args, None)?;
    let (objects, _) = parse_objects(&output).map_err(|source| NftError::Json {
        args: args.join(" "),
        source,
    })?;
    Ok(objects)
}

/// The base chains of other tables that drop forwarded packets by policy, as `family table
/// chain`. Pod traffic dies there whatever weft's table says.
pub fn forward_drop_chains(objects: &[NfListObject<'_>]) -> Vec<String> {
    objects
        .iter()
        .filter_map(|object| match object {
            NfListObject::Chain(c)
                if c.hook == Some(NfHook::Forward)
                    && c.policy == Some(NfChainPolicy::Drop)
                    && c.table != TABLE =>
            {
                let family = serde_json::to_value(c.family).unwrap_or_default();
                Some(format!(
                    "{} {} {}",
                    family.as_str().unwrap_or("?"),
                    c.table,
                    c.name
                ))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_drop_policies_elsewhere_are_found() {
        let listing = br#"{"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "weft", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 3, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "netdev", "table": "x", "name": "in", "handle": 4, "type": "filter", "hook": "ingress", "dev": ["a", "b"], "prio": 0, "policy": "drop"}}
        ]}"#;
        let (objects, unreadable) = parse_objects(listing).unwrap();
        assert_eq!(forward_drop_chains(&objects), ["ip filter FORWARD"]);
        assert_eq!(
            unreadable.len(),
            1,
            "a chain the types cannot read is skipped, not fatal: {unreadable:?}"
        );
    }

    #[test]
    fn a_listing_that_is_not_nft_json_is_an_error() {
        assert!(parse_objects(b"Error: something").is_err());
        assert!(parse_objects(br#"{"tables": []}"#).is_err());
    }
}
