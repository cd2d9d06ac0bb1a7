//! The node's WireGuard keys. The private key is generated on first start and kept at
//! `STATE_DIR/wireguard.key` (base64, as `wg genkey` writes it, mode 0600); it is never logged,
//! published or put in a plan. Only its public key leaves this module.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use weft_proto::lease::WgPublicKey;

/// File name of the private key under the state directory.
pub const KEY_FILE: &str = "wireguard.key";
/// File name of the next private key during a rotation (`weftd rotate-key` writes it; the daemon
/// publishes its public key, switches the device, then renames it over [`KEY_FILE`]).
pub const NEXT_KEY_FILE: &str = "wireguard.next.key";

/// Why the key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a WireGuard private key (expected 44 characters of base64, as `wg genkey` writes)")]
    Malformed { path: PathBuf },
}

/// A Curve25519 private key, clamped as WireGuard uses it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(of {})", self.public_key())
    }
}

impl PrivateKey {
    /// `bytes` clamped (RFC 7748 §5), as `wg genkey` does.
    pub fn from_bytes(mut bytes: [u8; 32]) -> PrivateKey {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// A new key from the kernel's random source.
    pub fn generate() -> std::io::Result<PrivateKey> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(PrivateKey::from_bytes(bytes))
    }

    pub fn bytes(&self) -> [u8; 32] {
        self.0
    }

    /// Lowercase hex, for the control socket.
    pub fn hex(&self) -> String {
        super::uapi::hex(&self.0)
    }

    /// The public key: X25519 of this key and the base point.
    pub fn public_key(&self) -> WgPublicKey {
        WgPublicKey(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }

    fn base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// Read the key at `path`, or make one there (mode 0600) when the file does not exist.
pub fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(text.trim()).ok_or_else(|| KeyError::Malformed {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate().map_err(io)?;
            write(path, &key).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// `weftd rotate-key`: make a new key and leave it as the next one in `state_dir`.
pub fn write_next(state_dir: &Path) -> Result<PrivateKey, KeyError> {
    let path = state_dir.join(NEXT_KEY_FILE);
    let key = PrivateKey::generate().map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    write(&path, &key).map_err(|source| KeyError::Io { path, source })?;
    Ok(key)
}

/// The next key waiting in `state_dir`, if there is one; `None` without the file.
pub fn pending_next(state_dir: &Path) -> Option<Result<PrivateKey, KeyError>> {
    let path = state_dir.join(NEXT_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(parse(text.trim()).ok_or(KeyError::Malformed { path })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => Some(Err(KeyError::Io { path, source })),
    }
}

/// The rotation to `next` is done: `next` becomes the key (written, then renamed over
/// [`KEY_FILE`]), and the next-key file goes if it still holds `next`.
pub fn promote(state_dir: &Path, next: &PrivateKey) -> Result<(), KeyError> {
    let path = state_dir.join(KEY_FILE);
    write(&path, next).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    if let Some(Ok(waiting)) = pending_next(state_dir) {
        if waiting == *next {
            let next_path = state_dir.join(NEXT_KEY_FILE);
            std::fs::remove_file(&next_path).map_err(|source| KeyError::Io {
                path: next_path,
                source,
            })?;
        }
    }
    Ok(())
}

fn parse(text: &str) -> Option<PrivateKey> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Some(PrivateKey::from_bytes(bytes.try_into().ok()?))
}

/// Write `key` to `path` by a temporary file (mode 0600 from its creation) and a rename.
fn write(path: &Path, key: &PrivateKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    writeln!(file, "{}", key.base64())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// The private keys the node may put on its device, by public key: the current one, and during a
/// rotation the next, read again from the state directory when a public key is not known yet.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<RwLock<BTreeMap<WgPublicKey, PrivateKey>>>,
    /// Where [`KEY_FILE`] and [`NEXT_KEY_FILE`] are; `None` holds only what was inserted.
    dir: Option<PathBuf>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<WgPublicKey> = self
            .keys
            .read()
            .map(|k| k.keys().copied().collect())
            .unwrap_or_default();
        write!(f, "Keyring(public keys {keys:?})")
    }
}

impl Keyring {
    /// A keyring holding `key`, reading the key files of `dir` for keys it does not know.
    pub fn with(key: PrivateKey, dir: Option<PathBuf>) -> Keyring {
        let ring = Keyring {
            dir,
            ..Keyring::default()
        };
        ring.insert(key);
        ring
    }

    pub fn insert(&self, key: PrivateKey) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(key.public_key(), key);
        }
    }

    /// The private key whose public key is `public`, from memory or else the key files.
    pub fn private(&self, public: &WgPublicKey) -> Option<PrivateKey> {
        if let Some(key) = self.keys.read().ok()?.get(public) {
            return Some(key.clone());
        }
        let dir = self.dir.as_ref()?;
        let on_disk = [
            pending_next(dir).and_then(Result::ok),
            parse(std::fs::read_to_string(dir.join(KEY_FILE)).ok()?.trim()),
        ];
        let found = on_disk
            .into_iter()
            .flatten()
            .find(|k| k.public_key() == *public)?;
        self.insert(found.clone());
        Some(found)
    }
}
