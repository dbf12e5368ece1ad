//! The one derivation of a member's PostgreSQL advisory-lock key.
use super::{MemberId, ProgramId};
use sha2::{Digest, Sha256};

/// The 64-bit `pg_advisory_xact_lock` key of a member: the first 8 bytes of
/// SHA-256("flash/member-lock/v1\0{program}\0{member uuid bytes}"), big-endian.
/// Every balance-changing transaction takes exactly this key, so two code paths can never
/// disagree on which lock protects a member. Changing it while old servers run breaks
/// mutual exclusion: bump the version string only with a full stop of the fleet.
pub fn member_lock_key(program: &ProgramId, member: MemberId) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"flash/member-lock/v1\0");
    hasher.update(program.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(member.as_uuid().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_matches_its_golden_value() {
        let program = ProgramId::parse("acme").unwrap();
        let member = MemberId::parse("00000000-0000-0000-0000-000000000001").unwrap();
        assert_eq!(member_lock_key(&program, member), GOLDEN);
    }

    #[test]
    fn lock_key_depends_on_program_and_member() {
        let member = MemberId::parse("00000000-0000-0000-0000-000000000001").unwrap();
        let other = MemberId::parse("00000000-0000-0000-0000-000000000002").unwrap();
        let acme = ProgramId::parse("acme").unwrap();
        let globex = ProgramId::parse("globex").unwrap();
        assert_ne!(
            member_lock_key(&acme, member),
            member_lock_key(&globex, member)
        );
        assert_ne!(
            member_lock_key(&acme, member),
            member_lock_key(&acme, other)
        );
    }

    /// Computed independently (Python hashlib) from the derivation documented above.
    const GOLDEN: i64 = 1_702_715_225_680_710_533;
}
