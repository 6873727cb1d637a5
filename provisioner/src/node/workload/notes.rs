//! What the workloads tell the agent, and what the agent tells them: events to
//! report, output lines to stream, an operator's request to inspect.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::schema::{EventKind, LogLine};

/// What the workloads tell the agent: events to report, lines to stream.
pub struct Notes {
    /// Events, in order.
    pub events: mpsc::UnboundedSender<(EventKind, Map<String, Value>)>,
    /// Container output; a line that does not fit is dropped.
    pub logs: mpsc::Sender<LogLine>,
    /// Told when an operator asks what the running containers look like.
    pub inspect: Arc<tokio::sync::Notify>,
}
