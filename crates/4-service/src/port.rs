//! The reconciler's narrow view of the journal writer: append records, and
//! wait until everything before is captured and durable. A leaf: the
//! pipeline implements it (`pipeline::PipelinePort`), tests can fake it.

use cj_types::RecordBody;

pub trait JournalPort: Send + Sync {
    /// Queues records for the journal, behind everything queued before.
    fn append(&self, records: Vec<RecordBody>) -> Result<(), String>;
    /// Waits until every change made before the call is captured and every
    /// record queued before it is durable; returns the durable seq.
    fn sync(&self) -> Result<u64, String>;
}
