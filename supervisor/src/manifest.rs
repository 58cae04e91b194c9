//! `<state_dir>/resurgam-state.json`: what the state directory holds, so that files that
//! vanish are noticed rather than taken for a new actor.
//!
//! ```json
//! {"format": 1, "id": "<32 hex digits>",
//!  "actors": {"kv": {"checkpointed": true, "logged": true, "held": "why"}}}
//! ```
//!
//! * `id` is made (random) when the directory is first used.
//! * `checkpointed`: a disk copy of the actor's checkpoint was written once (disk copies
//!   are replaced, never deleted); `logged`: a call log segment was. An actor that has
//!   either, and of whose checkpoints and log nothing is left, is held DEAD rather than
//!   started from nothing.
//! * `held`: why the actor is held DEAD (its state files are damaged or gone and
//!   acknowledged calls may be lost) until `resurgam restart ACTOR --fresh`; kept across
//!   supervisor restarts, so a repaired-looking log never silently revives it.
//!
//! The file is replaced atomically (temp file created exclusively, fsync, rename, fsync
//! of the directory), never followed if it is a link, and read with a size bound.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};

use resurgam_shared::checkpoint::OwnerTag;
use resurgam_shared::safefs::{self, Dir};

/// The manifest's file name in the state directory.
pub const MANIFEST_FILE: &str = "resurgam-state.json";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Largest manifest read (a bigger one is refused as damaged).
const MAX_BYTES: u64 = 4 << 20;

/// Why the manifest could not be read or made, each case naming the file (the texts are
/// what an operator reads on stderr when `resurgam run` refuses to start).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The state directory cannot be opened (the error names it).
    #[error("{source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The manifest cannot be opened (a link, say: the error says so).
    #[error("{source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A new manifest cannot be written.
    #[error("{source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than {MAX_BYTES} bytes: not a resurgam state manifest", path.display())]
    TooLarge { path: PathBuf },
    #[error(
        "{} is damaged ({why}); it records which actors this state directory holds: \
         restore it from a backup, or remove it to start over (the actors' files are \
         then trusted as they are)",
        path.display()
    )]
    Damaged { path: PathBuf, why: Damage },
    /// The format it has (`?` when it names none).
    #[error(
        "{} has format {found}; this build reads format {FORMAT} (a newer resurgam wrote it?)",
        path.display()
    )]
    Format { path: PathBuf, found: String },
}

/// What is wrong in a damaged manifest.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("bad id {0:?}")]
    BadId(String),
}

/// What the state directory records about one actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorEntry {
    #[serde(default)]
    pub checkpointed: bool,
    #[serde(default)]
    pub logged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Content {
    format: u32,
    id: String,
    #[serde(default)]
    actors: BTreeMap<String, ActorEntry>,
}

/// The state directory's manifest, as read at start and kept up to date.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    content: Content,
}

/// A fresh random id (128 bits, hex).
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom (a bare chroot): time and pid, still unique enough per host.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (t ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    /// Reads the manifest of `state_dir`, or makes a new one (with a new id) when the
    /// directory has none yet. A damaged manifest is an error naming the file: the
    /// operator decides (it is never silently replaced).
    pub fn open(state_dir: &Path) -> Result<Manifest, ManifestError> {
        let dir = Dir::open_configured(state_dir).map_err(|source| ManifestError::Dir {
            dir: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(MANIFEST_FILE);
        let name = OsStr::new(MANIFEST_FILE);
        let file = match dir.open_file(name, OFlag::O_RDONLY) {
            Ok(file) => file,
            Err(source) => return Err(ManifestError::Open { path, source }),
        };
        let Some(file) = file else {
            let m = Manifest {
                path,
                content: Content {
                    format: FORMAT,
                    id: new_id(),
                    actors: BTreeMap::new(),
                },
            };
            return match m.save() {
                Ok(()) => Ok(m),
                Err(source) => Err(ManifestError::Create {
                    path: m.path,
                    source,
                }),
            };
        };
        let mut text = String::new();
        if let Err(source) = file.take(MAX_BYTES + 1).read_to_string(&mut text) {
            return Err(ManifestError::Read { path, source });
        }
        if text.len() as u64 > MAX_BYTES {
            return Err(ManifestError::TooLarge { path });
        }
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => {
                return Err(ManifestError::Damaged {
                    path,
                    why: Damage::Json(e),
                });
            }
        };
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(FORMAT)) {
            let found = format.map_or_else(|| "?".to_string(), |f| f.to_string());
            return Err(ManifestError::Format { path, found });
        }
        let content: Content = match serde_json::from_value(value) {
            Ok(content) => content,
            Err(e) => {
                return Err(ManifestError::Damaged {
                    path,
                    why: Damage::Json(e),
                });
            }
        };
        if content.id.len() != 32 || !content.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let why = Damage::BadId(content.id);
            return Err(ManifestError::Damaged { path, why });
        }
        Ok(Manifest { path, content })
    }

    /// The state directory's id.
    pub fn id(&self) -> &str {
        &self.content.id
    }

    /// The id as bytes (checked to be 32 hex digits when read or made).
    pub fn id_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = self
                .content
                .id
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        out
    }

    /// Whose `actor`'s checkpoints are in this state directory.
    pub fn owner(&self, actor: &str) -> OwnerTag {
        OwnerTag::new(actor, self.id_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is recorded about `actor` (nothing yet: the default).
    pub fn entry(&self, actor: &str) -> ActorEntry {
        self.content.actors.get(actor).cloned().unwrap_or_default()
    }

    /// Changes what is recorded about `actor`; writes the file if anything changed.
    pub fn update(&mut self, actor: &str, f: impl FnOnce(&mut ActorEntry)) -> std::io::Result<()> {
        let mut e = self.entry(actor);
        f(&mut e);
        if self.content.actors.get(actor) == Some(&e)
            || (e == ActorEntry::default() && !self.content.actors.contains_key(actor))
        {
            return Ok(());
        }
        let before = self.content.actors.insert(actor.to_string(), e);
        let saved = self.save();
        if saved.is_err() {
            match before {
                Some(b) => self.content.actors.insert(actor.to_string(), b),
                None => self.content.actors.remove(actor),
            };
        }
        saved
    }

    /// Writes the file atomically.
    fn save(&self) -> std::io::Result<()> {
        let mut text =
            serde_json::to_string_pretty(&self.content).map_err(std::io::Error::other)?;
        text.push('\n');
        let tmp = self.path.with_file_name(".resurgam-state.json.tmp");
        safefs::replace_file(&self.path, &tmp, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_kept_and_updated_atomically() {
        let t = tempfile::tempdir().unwrap();
        let mut m = Manifest::open(t.path()).unwrap();
        let id = m.id().to_string();
        assert_eq!(id.len(), 32);
        m.update("kv", |e| e.checkpointed = true).unwrap();
        m.update("kv", |e| e.held = Some("why".into())).unwrap();
        let m = Manifest::open(t.path()).unwrap();
        assert_eq!(m.id(), id);
        assert_eq!(
            m.entry("kv"),
            ActorEntry {
                checkpointed: true,
                logged: false,
                held: Some("why".into())
            }
        );
        assert_eq!(m.entry("other"), ActorEntry::default());
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(MANIFEST_FILE)]);
    }

    #[test]
    fn a_state_dir_reached_through_a_link_is_used() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("private")).unwrap();
        std::os::unix::fs::symlink("private", t.path().join("state")).unwrap();
        let id = Manifest::open(&t.path().join("state"))
            .unwrap()
            .id()
            .to_string();
        assert!(t.path().join("private").join(MANIFEST_FILE).exists());
        assert_eq!(Manifest::open(&t.path().join("state")).unwrap().id(), id);
    }

    #[test]
    fn a_damaged_or_foreign_manifest_is_refused_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join(MANIFEST_FILE);
        for (text, want) in [
            ("{", "is damaged"),
            ("{\"format\": 9, \"id\": \"x\"}", "format 9"),
            ("{\"format\": 1, \"id\": \"x\"}", "bad id"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Manifest::open(t.path()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(MANIFEST_FILE), "{e}");
        }
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        let e = Manifest::open(t.path()).unwrap_err();
        assert!(matches!(e, ManifestError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
