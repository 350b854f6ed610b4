//! Which gaps a start records (design 12, "Where each gap comes from"): a
//! pure function of what recovery, the clean-stop marker, the boot id and
//! the baselines' filesystem identities say, table-tested below.

use cj_types::{GapReason, GapRecord, GAP_FLAG_QUIESCENT};

use crate::state::CleanStop;

/// What a start knows about the time before it.
#[derive(Clone, Debug, Default)]
pub struct StartFacts {
    /// The journal was just created: there is no "before".
    pub created: bool,
    /// The last record recovery kept, and its time.
    pub last_seq: u64,
    pub last_time_ns: u64,
    /// Acknowledged records were found missing (design 7 step 5a).
    pub lost: bool,
    /// The clean-stop marker, if a valid one was there.
    pub clean_stop: Option<CleanStop>,
    /// The kernel's boot id differs from the last run's (or is unknown).
    pub new_boot: bool,
    /// Roots whose filesystem is another than their baseline's.
    pub changed_fs: Vec<Vec<u8>>,
    /// The fanotify group of the last run was handed back (systemd's
    /// descriptor store): its marks stayed, and every event since the last
    /// run stopped reading is still queued in it.
    pub inherited_group: bool,
}

/// The last run stopped cleanly: its clean-stop marker names the last
/// record recovery kept, and no acknowledged record is missing.
pub fn was_clean(lost: bool, clean_stop: Option<CleanStop>, last_seq: u64) -> bool {
    !lost && clean_stop.is_some_and(|c| c.last_seq == last_seq)
}

/// The gap records to journal, right after the roots are re-armed: every
/// change after them is captured; everything between the last record and
/// them is not.
pub fn start_gaps(f: &StartFacts) -> Vec<GapRecord> {
    if f.created {
        return Vec::new();
    }
    let clean = was_clean(f.lost, f.clean_stop, f.last_seq);
    // Every stat journaled before this gap predates it (design 11.7).
    let quiescent = clean && f.clean_stop.is_some_and(|c| c.quiescent);
    let (reason, detail) = match (clean, f.new_boot) {
        (true, false) => (GapReason::DaemonDown, "the daemon was stopped"),
        (true, true) => (
            GapReason::NewBoot,
            "the machine restarted since the daemon last ran",
        ),
        (false, false) => (
            GapReason::UncleanStop,
            "the daemon stopped without a clean shutdown (crash or kill -9)",
        ),
        (false, true) => (
            GapReason::UncleanStop,
            "the machine restarted without a clean daemon shutdown (crash or power loss)",
        ),
    };
    // After a clean stop (everything it read is journaled) the group kept
    // by systemd holds every later event: there is no gap (design 12.1).
    let mut gaps = Vec::new();
    if clean && f.inherited_group {
        gaps.extend(fs_changed(f));
        return gaps;
    }
    gaps.push(GapRecord {
        reason,
        fsid: 0,
        scope: Vec::new(),
        start_time_ns: f.last_time_ns,
        flags: if quiescent { GAP_FLAG_QUIESCENT } else { 0 },
        detail: detail.as_bytes().to_vec(),
    });
    gaps.extend(fs_changed(f));
    gaps
}

/// A root whose filesystem is not the one its baseline was taken on (mkfs,
/// another device mounted there) is compared entry by entry.
fn fs_changed(f: &StartFacts) -> impl Iterator<Item = GapRecord> + '_ {
    f.changed_fs.iter().map(|root| GapRecord {
        reason: GapReason::FsChanged,
        fsid: 0,
        scope: root.clone(),
        start_time_ns: f.last_time_ns,
        flags: 0,
        detail: b"the filesystem under the root changed identity".to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(last_seq: u64, quiescent: bool) -> Option<CleanStop> {
        Some(CleanStop {
            last_seq,
            quiescent,
        })
    }

    #[test]
    fn the_start_gap_table() {
        // (clean stop, lost, new boot) -> (reason, quiescent flag)
        let cases = [
            (stop(10, true), false, false, GapReason::DaemonDown, true),
            (stop(10, false), false, false, GapReason::DaemonDown, false),
            (stop(10, true), false, true, GapReason::NewBoot, true),
            (None, false, false, GapReason::UncleanStop, false),
            (None, false, true, GapReason::UncleanStop, false),
            // A marker for another seq: records after it, or a stale file.
            (stop(9, true), false, false, GapReason::UncleanStop, false),
            // Records lost: never a clean stop, whatever the marker says.
            (stop(10, true), true, false, GapReason::UncleanStop, false),
        ];
        for (i, (clean_stop, lost, new_boot, reason, quiescent)) in cases.into_iter().enumerate() {
            let gaps = start_gaps(&StartFacts {
                last_seq: 10,
                last_time_ns: 77,
                lost,
                clean_stop,
                new_boot,
                ..StartFacts::default()
            });
            assert_eq!(gaps.len(), 1, "case {i}");
            assert_eq!(gaps[0].reason, reason, "case {i}");
            assert_eq!(
                gaps[0].flags & GAP_FLAG_QUIESCENT != 0,
                quiescent,
                "case {i}"
            );
            assert!(gaps[0].scope.is_empty(), "case {i}: every root");
            assert_eq!(gaps[0].start_time_ns, 77, "case {i}");
        }
    }

    #[test]
    fn a_new_journal_has_no_start_gap_and_changed_filesystems_get_their_own() {
        let created = StartFacts {
            created: true,
            ..StartFacts::default()
        };
        assert!(start_gaps(&created).is_empty());
        let gaps = start_gaps(&StartFacts {
            changed_fs: vec![b"/a".to_vec(), b"/b".to_vec()],
            ..StartFacts::default()
        });
        let fs: Vec<_> = gaps
            .iter()
            .filter(|g| g.reason == GapReason::FsChanged)
            .map(|g| g.scope.clone())
            .collect();
        assert_eq!(fs, vec![b"/a".to_vec(), b"/b".to_vec()]);
    }

    #[test]
    fn a_group_kept_by_systemd_after_a_clean_stop_means_no_gap() {
        let kept = |clean_stop, lost| StartFacts {
            last_seq: 10,
            lost,
            clean_stop,
            inherited_group: true,
            ..StartFacts::default()
        };
        assert!(start_gaps(&kept(stop(10, false), false)).is_empty());
        // A crash: what the last run read but did not journal is lost.
        let gaps = start_gaps(&kept(None, false));
        assert_eq!(gaps[0].reason, GapReason::UncleanStop);
        let gaps = start_gaps(&kept(stop(10, true), true));
        assert_eq!(gaps[0].reason, GapReason::UncleanStop);
    }
}
