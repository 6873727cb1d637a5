//! Identifiers that identify nothing: firmware fills the SMBIOS UUID and serial with
//! placeholders when the vendor did not (all zeros, `To Be Filled By O.E.M.`), and
//! cloned boards share one UUID. Such a value is never used to match a machine to its
//! declaration; the machine's record is flagged instead.

/// UUIDs firmware is known to ship as placeholders, besides any UUID of one repeated
/// hex digit (all zeros, all `f`).
const PLACEHOLDER_UUIDS: &[&str] = &[
    // AMI Aptio's default on many boards (ASRock, Supermicro, Gigabyte).
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    // Sequential fillers seen in OEM images.
    "12345678-1234-5678-90ab-cddeefaabbcc",
    "01234567-8910-1112-1314-151617181920",
];

/// Serial numbers firmware ships as placeholders (compared without case), besides an
/// empty one and any of one repeated character (`00000000`, `..........`).
const PLACEHOLDER_SERIALS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system serial number",
    "chassis serial number",
    "base board serial number",
    "not specified",
    "not applicable",
    "not available",
    "none",
    "n/a",
    "na",
    "oem",
    "o.e.m.",
    "0123456789",
    "1234567890",
    "123456789",
    "serial",
    "empty",
    "unknown",
];

/// Whether `uuid` (any case) is a placeholder.
pub fn placeholder_uuid(uuid: &str) -> bool {
    let u = uuid.to_ascii_lowercase();
    let digits: Vec<char> = u.chars().filter(|c| *c != '-').collect();
    digits.windows(2).all(|w| w[0] == w[1]) || PLACEHOLDER_UUIDS.contains(&u.as_str())
}

/// Whether `serial` is a placeholder.
pub fn placeholder_serial(serial: &str) -> bool {
    let s = serial.trim().to_ascii_lowercase();
    let chars: Vec<char> = s.chars().collect();
    s.is_empty()
        || chars.windows(2).all(|w| w[0] == w[1])
        || PLACEHOLDER_SERIALS.contains(&s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_told_from_real_identifiers() {
        for u in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
        ] {
            assert!(placeholder_uuid(u), "{u}");
        }
        assert!(!placeholder_uuid("6e4a2b1c-0000-4000-8000-000000000001"));
        for s in [
            "To Be Filled By O.E.M.",
            "Default string",
            "",
            "  ",
            "00000000",
            "N/A",
        ] {
            assert!(placeholder_serial(s), "{s:?}");
        }
        assert!(!placeholder_serial("CZ2D1234XY"));
    }
}
