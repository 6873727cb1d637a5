//! The state file reader: whatever is in state.json (a crash mid-write is prevented by
//! the atomic rename, but the file is on disk and may be damaged), parsing gives a
//! state or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_runtime::state;

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = state::parse(data) {
        // What the commands do next with a loaded state must not panic either.
        let _ = state::validate_id(&st.id);
        let _ = serde_json::to_string(&st.annotations);
    }
});
