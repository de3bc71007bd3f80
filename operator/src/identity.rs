//! An object's uid kept as its bits rather than as a string, for what the operator holds per
//! tenant (the cached TenantAssignment, the uids `spec_changes` remembers). It parses any string
//! and gives back exactly that string; only the canonical form the API server writes (a
//! lowercase, dashed UUID) is packed.

use std::fmt;

/// A uid: a canonical UUID as its 128 bits (two halves, so it stays 8-byte aligned), anything
/// else as itself. 24 bytes, no allocation for what the API server assigns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Uid {
    Uuid(u64, u64),
    Other(Box<str>),
}

impl Uid {
    pub fn parse(uid: &str) -> Self {
        match canonical_uuid(uid) {
            Some(bits) => Self::Uuid((bits >> 64) as u64, bits as u64),
            None => Self::Other(uid.into()),
        }
    }
}

/// The bits of `s` when it is a UUID written as `Display` writes it back: 8-4-4-4-12 lowercase
/// hex digits.
fn canonical_uuid(s: &str) -> Option<u128> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut bits = 0u128;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        bits = bits << 4 | u128::from(digit);
    }
    Some(bits)
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uuid(hi, lo) => write!(
                f,
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                hi >> 32,
                (hi >> 16) & 0xffff,
                hi & 0xffff,
                lo >> 48,
                lo & 0xffff_ffff_ffff
            ),
            Self::Other(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_uid_is_24_bytes() {
        assert_eq!(size_of::<Uid>(), 24);
        assert_eq!(size_of::<Option<Uid>>(), 24);
    }

    #[test]
    fn what_the_api_server_writes_is_packed() {
        assert_eq!(
            Uid::parse("905b3bbd-8f22-4770-90b5-afc747e17da5"),
            Uid::Uuid(0x905b_3bbd_8f22_4770, 0x90b5_afc7_47e1_7da5)
        );
    }

    #[test]
    fn other_spellings_are_kept_as_they_are() {
        for uid in [
            "905B3BBD-8F22-4770-90B5-AFC747E17DA5",
            "905b3bbd8f22477090b5afc747e17da5",
            "905b3bbd-8f224-770-90b5-afc747e17da5",
            "not-a-uuid",
            "",
        ] {
            assert_eq!(Uid::parse(uid), Uid::Other(uid.into()), "{uid}");
        }
    }

    proptest! {
        #[test]
        fn any_uid_is_given_back_as_it_was(uid in "[0-9a-fA-F-]{0,40}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}") {
            prop_assert_eq!(Uid::parse(&uid).to_string(), uid);
        }

        #[test]
        fn a_canonical_uuid_is_packed(bits in any::<u128>()) {
            let text = format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                bits >> 96, (bits >> 80) & 0xffff, (bits >> 64) & 0xffff, (bits >> 48) & 0xffff,
                bits & 0xffff_ffff_ffff
            );
            prop_assert_eq!(Uid::parse(&text), Uid::Uuid((bits >> 64) as u64, bits as u64));
        }
    }
}
