//! The disk-copy thread: copies an actor's newest valid mmap checkpoint to its synced
//! disk copy (temp file, fsync, rename, fsync of the directory), off the call path.
//! Requests for one actor coalesce: a burst of checkpoints costs one copy.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::Receiver;

use resurgam_shared::checkpoint::{self, CheckpointError};

use crate::core::{ActorId, Event};
use crate::manifest::Manifest;
use crate::shell::{LoopTx, ShellEvent};

/// The files of one actor.
#[derive(Clone)]
pub struct Files {
    /// Whose the checkpoints are: copies name it, slots of another owner are refused.
    pub owner: checkpoint::OwnerTag,
    pub name: String,
    pub mmap: PathBuf,
    pub disk: PathBuf,
}

pub fn start(
    requests: Receiver<(ActorId, Files)>,
    events: LoopTx,
    manifest: Arc<Mutex<Manifest>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("disk-sync".into())
        .spawn(move || {
            // Generation each disk copy holds (so an unchanged checkpoint is not rewritten).
            let mut synced: HashMap<ActorId, (u64, u64)> = HashMap::new();
            while let Ok(first) = requests.recv() {
                let mut batch = BTreeMap::from([first]);
                batch.extend(requests.try_iter());
                for (actor, f) in batch {
                    let event = sync_one(&f, actor, synced.get(&actor).copied());
                    if let Event::DiskSynced {
                        generation,
                        last_seq,
                        ..
                    } = event
                        && synced.insert(actor, (generation, last_seq)).is_none()
                    {
                        record_checkpointed(&manifest, &f.name);
                    }
                    if events.send(ShellEvent::Core(event)).is_err() {
                        return;
                    }
                }
            }
        })
}

/// Records in the manifest that the actor has a disk copy (once per actor and run; the
/// manifest writes only what changed).
fn record_checkpointed(manifest: &Mutex<Manifest>, actor: &str) {
    let mut m = manifest.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = m.update(actor, |e| e.checkpointed = true) {
        tracing::error!(actor, path = %m.path().display(), error = %e, "cannot record the disk copy in the state directory's manifest");
    }
}

fn sync_one(f: &Files, actor: ActorId, already: Option<(u64, u64)>) -> Event {
    let slots = checkpoint::read_mmap_slots_owned(&f.mmap, Some(&f.owner));
    let newest = slots
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .max_by_key(|c| (c.generation, c.last_seq));
    let Some(ck) = newest else {
        return Event::DiskSyncFailed {
            actor,
            message: format!(
                "no valid checkpoint in {} to copy ({})",
                f.mmap.display(),
                CheckpointError::Missing
            ),
        };
    };
    // Never replace the disk copy with an older checkpoint (the newest mmap slot may
    // have been damaged): report what the copy holds instead.
    let on_disk = match already {
        Some(x) => Some(x),
        None => checkpoint::read_disk_copy_owned(&f.disk, Some(&f.owner))
            .ok()
            .map(|c| (c.generation, c.last_seq)),
    };
    if let Some((generation, last_seq)) = on_disk
        && (generation, last_seq) > (ck.generation, ck.last_seq)
    {
        tracing::warn!(actor = %f.name, disk_generation = generation, mmap_generation = ck.generation, "the newest valid mmap checkpoint is older than the disk copy; keeping the disk copy");
        return Event::DiskSynced {
            actor,
            generation,
            last_seq,
        };
    }
    if already == Some((ck.generation, ck.last_seq)) {
        return Event::DiskSynced {
            actor,
            generation: ck.generation,
            last_seq: ck.last_seq,
        };
    }
    match checkpoint::write_disk_copy_of(&f.disk, &ck, Some(&f.owner)) {
        Ok(()) => {
            tracing::debug!(actor = %f.name, generation = ck.generation, last_seq = ck.last_seq, bytes = ck.payload.len(), "disk copy synced");
            Event::DiskSynced {
                actor,
                generation: ck.generation,
                last_seq: ck.last_seq,
            }
        }
        Err(e) => Event::DiskSyncFailed {
            actor,
            message: format!("write {}: {e}", f.disk.display()),
        },
    }
}
