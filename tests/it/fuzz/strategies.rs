//! Strategies: a request is a valid one with some fields (none, one, or any) replaced by
//! wild values; `mask` picks which.
use super::*;

pub(super) fn mask() -> BoxedStrategy<u32> {
    prop_oneof![
        4 => Just(0u32),
        4 => (0..10u32).prop_map(|bit| 1 << bit),
        2 => any::<u32>(),
    ]
    .boxed()
}

pub(super) fn pick<T>(mask: u32, bit: u32, valid: T, wild: T) -> T {
    if mask & (1 << bit) != 0 {
        wild
    } else {
        valid
    }
}

pub(super) fn call_strategy(seeded: &Arc<Seeded>) -> BoxedStrategy<Call> {
    Union::new_weighted(vec![
        (3, create_program().prop_map(Call::CreateProgram).boxed()),
        (3, get_program().prop_map(Call::GetProgram).boxed()),
        (3, update_program().prop_map(Call::UpdateProgram).boxed()),
        (
            6,
            enroll_member(seeded).prop_map(Call::EnrollMember).boxed(),
        ),
        (6, get_member(seeded).prop_map(Call::GetMember).boxed()),
        (14, award(seeded).prop_map(Call::Award).boxed()),
        (5, award_batch(seeded).prop_map(Call::AwardBatch).boxed()),
        (3, enroll_batch(seeded).prop_map(Call::EnrollBatch).boxed()),
        (10, spend(seeded).prop_map(Call::Spend).boxed()),
        (
            8,
            reverse_award(seeded).prop_map(Call::ReverseAward).boxed(),
        ),
        (
            8,
            reverse_spend(seeded).prop_map(Call::ReverseSpend).boxed(),
        ),
        (8, adjust(seeded).prop_map(Call::Adjust).boxed()),
        (6, list_entries(seeded).prop_map(Call::ListEntries).boxed()),
        (5, get_liability().prop_map(Call::GetLiability).boxed()),
        (3, tier_status(seeded).prop_map(Call::GetTierStatus).boxed()),
        (
            3,
            tier_history(seeded).prop_map(Call::ListTierHistory).boxed(),
        ),
        (
            3,
            evaluate_member(seeded)
                .prop_map(Call::EvaluateMember)
                .boxed(),
        ),
        (5, set_tier(seeded).prop_map(Call::SetTier).boxed()),
        (
            5,
            create_invites(seeded).prop_map(Call::CreateInvites).boxed(),
        ),
        (
            4,
            invite_call(seeded)
                .prop_map(|(program_id, code, referee_member_id, idempotency_key)| {
                    Call::AcceptInvite(proto::AcceptInviteRequest {
                        program_id,
                        code,
                        referee_member_id,
                        idempotency_key,
                    })
                })
                .boxed(),
        ),
        (
            3,
            invite_call(seeded)
                .prop_map(|(program_id, code, _, idempotency_key)| {
                    Call::ConvertInvite(proto::ConvertInviteRequest {
                        program_id,
                        code,
                        idempotency_key,
                    })
                })
                .boxed(),
        ),
        (
            2,
            invite_call(seeded)
                .prop_map(|(program_id, code, _, idempotency_key)| {
                    Call::RevokeInvite(proto::RevokeInviteRequest {
                        program_id,
                        code,
                        idempotency_key,
                    })
                })
                .boxed(),
        ),
        (
            2,
            (invite_call(seeded), wild_enum(), wild_i32(), wild_string())
                .prop_map(
                    |((program_id, _, referrer_member_id, _), status, page_size, page_token)| {
                        Call::ListInvites(proto::ListInvitesRequest {
                            program_id,
                            referrer_member_id,
                            status,
                            page_size,
                            page_token,
                        })
                    },
                )
                .boxed(),
        ),
        (
            2,
            invite_call(seeded)
                .prop_map(|(program_id, _, member_id, _)| {
                    Call::GetReferralStats(proto::GetReferralStatsRequest {
                        program_id,
                        member_id,
                    })
                })
                .boxed(),
        ),
        (
            2,
            (invite_call(seeded), wild_i32())
                .prop_map(|((program_id, _, _, _), max_nodes)| {
                    Call::GetGraph(proto::GetGraphRequest {
                        program_id,
                        max_nodes,
                    })
                })
                .boxed(),
        ),
        (
            2,
            (invite_call(seeded), wild_i32(), wild_i32())
                .prop_map(|((program_id, _, member_id, _), depth, max_nodes)| {
                    Call::GetNeighborhood(proto::GetNeighborhoodRequest {
                        program_id,
                        member_id,
                        depth,
                        max_nodes,
                    })
                })
                .boxed(),
        ),
        (
            1,
            (invite_call(seeded), wild_i32())
                .prop_map(|((program_id, _, _, _), limit)| {
                    Call::ListTopAdvocates(proto::ListTopAdvocatesRequest { program_id, limit })
                })
                .boxed(),
        ),
        (
            1,
            invite_call(seeded)
                .prop_map(|(program_id, _, _, _)| {
                    Call::RebuildSnapshot(proto::RebuildSnapshotRequest { program_id })
                })
                .boxed(),
        ),
    ])
    .boxed()
}

/// Invites from seeded members to valid, repeated and malformed contacts.
pub(super) fn create_invites(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::CreateInvitesRequest> {
    let valid = (valid_member(seeded), valid_key(), wild_contacts());
    let wild = (wild_program_id(), wild_uuid(seeded), wild_key());
    (valid, wild, mask()).prop_map(
        |((member, key, contacts), (w_program, w_member, w_key), m)| proto::CreateInvitesRequest {
            program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
            referrer_member_id: pick(m, 1, member, w_member),
            idempotency_key: pick(m, 2, key, w_key),
            contacts,
        },
    )
}

/// (program, code, member, key) of a referral call: codes of the right shape (unknown),
/// wrong shapes and wild strings.
pub(super) fn invite_call(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = (String, String, String, String)> {
    let code = prop_oneof![
        Just("AAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        Just("short".to_owned()),
        Just("a/b+c=".repeat(4)),
        wild_string(),
    ];
    let valid = (valid_member(seeded), valid_key(), code);
    let wild = (wild_program_id(), wild_uuid(seeded), wild_key());
    (valid, wild, mask()).prop_map(|((member, key, code), (w_program, w_member, w_key), m)| {
        (
            pick(m, 0, PROGRAM.to_owned(), w_program),
            code,
            pick(m, 1, member, w_member),
            pick(m, 2, key, w_key),
        )
    })
}

/// The daily cap of the seeded program.
pub(super) const DAILY_CAP: i64 = 50_000;

// --- wild values -------------------------------------------------------------------------

pub(super) fn repeated(count: usize, c: char) -> String {
    std::iter::repeat_n(c, count).collect()
}

/// Strings of `len` characters drawn by `alphabet` from a seeded xorshift: one value tree
/// per string rather than one per character, which keeps generation cheap.
pub(super) fn text(
    alphabet: impl Fn(u64) -> char + Clone + 'static,
    len: std::ops::Range<usize>,
) -> BoxedStrategy<String> {
    (any::<u64>(), len)
        .prop_map(move |(seed, len)| {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet(x)
                })
                .collect()
        })
        .boxed()
}

pub(super) fn slug_char(x: u64) -> char {
    char::from(b"abcdefghijklmnopqrstuvwxyz0123456789-"[(x % 37) as usize])
}

pub(super) fn name_char(x: u64) -> char {
    char::from(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "[(x % 63) as usize],
    )
}

/// Any character: mostly printable ASCII, then control characters, the BMP and beyond.
pub(super) fn any_char(x: u64) -> char {
    let pick = (x >> 32) as u32;
    let c = match x % 20 {
        0..=9 => 0x20 + pick % 0x5f,
        10..=12 => [pick % 0x20, 0x7f + pick % 0x21][(pick & 1) as usize],
        13..=17 => pick % 0x1_0000,
        _ => 0x1_0000 + pick % 0x10_0000,
    };
    char::from_u32(c).unwrap_or('\u{fffd}')
}

pub(super) fn wild_string() -> BoxedStrategy<String> {
    let special = prop_oneof![
        Just('\0'),
        Just('\n'),
        Just('\t'),
        Just('\u{7f}'),
        Just('\u{1b}'),
        Just('\u{85}'),
        Just('\u{200b}'),
        Just('\u{202e}'),
        Just('\u{feff}'),
        Just('\u{fffd}'),
        Just('é'),
        Just('😀'),
        Just('a'),
        Just('-'),
        Just(' '),
    ];
    let lengths = prop_oneof![
        Just(32usize),
        Just(33),
        Just(64),
        Just(65),
        Just(128),
        Just(129),
        Just(200),
        Just(201),
        Just(256),
        Just(257),
        Just(1_000),
        Just(70_000),
    ];
    prop_oneof![
        3 => Just(String::new()),
        1 => Just(" ".to_owned()),
        3 => text(slug_char, 1..71),
        3 => text(any_char, 0..41),
        3 => text(any_char, 0..300),
        3 => vec(special, 1..24).prop_map(String::from_iter),
        2 => (lengths, prop_oneof![Just('a'), Just('é'), Just('😀'), Just('\0')])
            .prop_map(|(n, c)| repeated(n, c)),
        1 => prop_oneof![
            Just("null".to_owned()),
            Just("'; DROP TABLE ledger_entries; --".to_owned()),
            Just("%s%n%x\\".to_owned()),
            Just("\\u0000".to_owned()),
            Just("{\"a\":1}".to_owned()),
        ],
    ]
    .boxed()
}

pub(super) fn wild_i64() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => prop_oneof![
            Just(0i64),
            Just(1),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MIN + 1),
            Just(i64::MAX),
            Just(i64::MAX - 1),
            Just(MAX_RULE_POINTS),
            Just(MAX_RULE_POINTS + 1),
            Just(-MAX_RULE_POINTS),
            Just(-MAX_RULE_POINTS - 1),
            Just(MAX_AMOUNT_MINOR),
            Just(MAX_AMOUNT_MINOR + 1),
            Just(1_000_000),
            Just(1_000_001),
            Just(100_000),
            Just(100_001),
            Just(i64::from(i32::MAX) + 1),
        ],
        3 => any::<i64>(),
        3 => -100_000..100_000i64,
    ]
    .boxed()
}

pub(super) fn wild_i32() -> BoxedStrategy<i32> {
    prop_oneof![
        3 => prop_oneof![
            Just(0i32),
            Just(1),
            Just(-1),
            Just(i32::MIN),
            Just(i32::MAX),
            Just(200),
            Just(201),
            Just(3_660),
            Just(3_661),
        ],
        2 => any::<i32>(),
        2 => -1_000..5_000i32,
    ]
    .boxed()
}

pub(super) fn wild_enum() -> BoxedStrategy<i32> {
    prop_oneof![
        4 => 0..4i32,
        2 => prop_oneof![Just(99i32), Just(-1), Just(4), Just(i32::MIN), Just(i32::MAX)],
        1 => any::<i32>(),
    ]
    .boxed()
}

pub(super) fn wild_timestamp() -> BoxedStrategy<Option<prost_types::Timestamp>> {
    let now = start_of_test().timestamp();
    let seconds = prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0i64),
        Just(-1),
        // year 10000, year 0, around chrono's and PostgreSQL's limits
        Just(253_402_300_800),
        Just(-62_167_219_201),
        Just(8_210_298_412_799),
        Just(8_210_298_412_800),
        Just(-8_334_632_851_200),
        Just(-8_334_632_851_201),
        Just(9_224_318_015_999),
        Just(-210_866_803_200),
        Just(-210_866_803_201),
        any::<i64>(),
        (now - 10 * 366 * 86_400)..(now + 10 * 366 * 86_400),
        (now - 100)..(now + 100),
    ];
    let nanos = prop_oneof![
        Just(0i32),
        Just(-1),
        Just(999_999_999),
        Just(1_000_000_000),
        Just(i32::MIN),
        Just(i32::MAX),
        0..1_000_000_000i32,
    ];
    prop_oneof![
        1 => Just(None),
        4 => (seconds, nanos).prop_map(|(seconds, nanos)| {
            Some(prost_types::Timestamp {
                seconds,
                nanos,
            })
        }),
    ]
    .boxed()
}

pub(super) fn wild_program_id() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just(PROGRAM.to_owned()),
        1 => Just("no-such-program".to_owned()),
        1 => Just("ACME".to_owned()),
        1 => Just(repeated(64, 'a')),
        1 => Just(repeated(65, 'a')),
        1 => text(slug_char, 1..65),
        4 => wild_string(),
    ]
    .boxed()
}

pub(super) fn uuid_text() -> BoxedStrategy<String> {
    any::<u128>()
        .prop_map(|n| Uuid::from_u128(n).to_string())
        .boxed()
}

pub(super) fn wild_uuid(seeded: &Arc<Seeded>) -> BoxedStrategy<String> {
    let member = prop::sample::select(seeded.members.clone());
    prop_oneof![
        2 => member.clone(),
        1 => member.clone().prop_map(|m| m.to_uppercase()),
        1 => member.clone().prop_map(|m| m.replace('-', "")),
        1 => member.clone().prop_map(|m| format!("{{{m}}}")),
        1 => member.clone().prop_map(|m| format!("urn:uuid:{m}")),
        1 => member.clone().prop_map(|m| m[..35].to_owned()),
        1 => member.clone().prop_map(|m| format!("{m}0")),
        1 => member.prop_map(|m| format!(" {m}")),
        1 => uuid_text(),
        1 => Just(Uuid::nil().to_string()),
        1 => Just(Uuid::max().to_string()),
        1 => Just("not-a-uuid".to_owned()),
        1 => Just("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz".to_owned()),
        4 => wild_string(),
    ]
    .boxed()
}

pub(super) fn wild_key() -> BoxedStrategy<String> {
    prop_oneof![
        2 => pool_key(),
        1 => Just(repeated(128, 'k')),
        1 => Just(repeated(128, '😀')),
        1 => Just(repeated(129, 'k')),
        1 => Just("seed-award-0-0".to_owned()),
        1 => Just("seed-spend-0".to_owned()),
        4 => wild_string(),
    ]
    .boxed()
}

pub(super) fn wild_entry_ref(seeded: &Arc<Seeded>) -> BoxedStrategy<Option<proto::EntryRef>> {
    let ids = prop::sample::select(
        seeded
            .award_ids
            .iter()
            .chain(&seeded.spend_ids)
            .cloned()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(proto::EntryRef { r#ref: None })),
        2 => ids.prop_map(|id| Some(proto::EntryRef { r#ref: Some(Ref::EntryId(id)) })),
        2 => wild_uuid(seeded)
            .prop_map(|id| Some(proto::EntryRef { r#ref: Some(Ref::EntryId(id)) })),
        2 => wild_key()
            .prop_map(|key| Some(proto::EntryRef { r#ref: Some(Ref::IdempotencyKey(key)) })),
    ]
    .boxed()
}

pub(super) fn wild_rules() -> BoxedStrategy<Option<proto::ProgramRules>> {
    let currency = prop_oneof![
        Just("USD".to_owned()),
        Just("usd".to_owned()),
        Just("XXX".to_owned()),
        Just("JPY".to_owned()),
        Just("KWD".to_owned()),
        wild_string(),
    ];
    let timezone = prop_oneof![
        Just("UTC".to_owned()),
        Just("Mars/Olympus_Mons".to_owned()),
        Just("europe/paris".to_owned()),
        Just("+05:00".to_owned()),
        wild_string(),
    ];
    let tier = (
        wild_string(),
        wild_string(),
        wild_i64(),
        wild_i64(),
        wild_i64(),
    )
        .prop_map(
            |(code, name, qualify_points, maintain_points, multiplier_bp)| proto::Tier {
                code,
                name,
                qualify_points,
                maintain_points,
                multiplier_bp,
            },
        );
    let tiers = prop_oneof![
        vec(tier.clone(), 0..4),
        vec(tier, 10..12),
        valid_tiers().prop_map(|mut tiers| {
            if let Some(last) = tiers.last_mut() {
                last.name = "Gold\0".into();
            }
            tiers
        }),
        valid_tiers().prop_map(|mut tiers| {
            if let Some(first) = tiers.first().cloned() {
                tiers.push(first);
            }
            tiers
        }),
    ];
    let rules = (
        currency,
        timezone,
        wild_i64(),
        wild_i64(),
        proptest::option::of(wild_i64()),
        wild_i32(),
        tiers,
        valid_rules(),
        mask(),
        (
            proptest::option::of(wild_i32()),
            proptest::option::of(wild_i32()),
            vec(wild_i32(), 0..12),
            proptest::option::of(wild_i64()),
            proptest::option::of(wild_i32()),
            proptest::option::of(wild_i32()),
        ),
    )
        .prop_map(
            |(
                currency,
                timezone,
                rate,
                min,
                cap,
                days,
                tiers,
                valid,
                m,
                (window, grace, reminders, bonus, reengage, retention),
            )| proto::ProgramRules {
                currency: pick(m, 0, valid.currency, currency),
                timezone: pick(m, 1, valid.timezone, timezone),
                base_rate_bp: pick(m, 2, valid.base_rate_bp, rate),
                min_amount_minor: pick(m, 3, valid.min_amount_minor, min),
                daily_cap_points: pick(m, 4, valid.daily_cap_points, cap),
                points_validity_days: pick(m, 5, valid.points_validity_days, days),
                tiers: pick(m, 6, valid.tiers, tiers),
                tier_window_months: pick(m, 7, None, window),
                grace_days: pick(m, 8, None, grace),
                grace_reminder_days: pick(m, 9, vec![], reminders),
                reupgrade_bonus_points: pick(m, 10, None, bonus),
                birthday_bonus_points: pick(m, 11, None, bonus),
                reengagement_after_days: pick(m, 12, None, reengage),
                events_retention_days: pick(m, 13, None, retention),
                ..Default::default()
            },
        );
    prop_oneof![1 => Just(None), 6 => rules.prop_map(Some)].boxed()
}

// --- valid values ------------------------------------------------------------------------

pub(super) fn pool_key() -> BoxedStrategy<String> {
    (0..KEYS).prop_map(|i| format!("fuzz-key-{i}")).boxed()
}

pub(super) fn fresh_token() -> BoxedStrategy<String> {
    any::<u128>().prop_map(|n| format!("{n:032x}")).boxed()
}

/// A key from the shared pool, or a fresh one.
pub(super) fn valid_key() -> BoxedStrategy<String> {
    prop_oneof![3 => pool_key(), 1 => fresh_token().prop_map(|t| format!("fresh-{t}"))].boxed()
}

/// A valid instant up to 400 days before the (fixed) test clock.
pub(super) fn valid_time() -> BoxedStrategy<prost_types::Timestamp> {
    let now = start_of_test();
    (0..400 * 86_400i64, 0..1_000_000_000u32)
        .prop_map(move |(back, nanos)| {
            let mut t = timestamp(now - chrono::Duration::seconds(back));
            t.nanos = if back == 0 { 0 } else { nanos as i32 };
            t
        })
        .boxed()
}

pub(super) fn valid_member(seeded: &Arc<Seeded>) -> BoxedStrategy<String> {
    prop::sample::select(seeded.members.clone()).boxed()
}

pub(super) fn valid_tiers() -> BoxedStrategy<Vec<proto::Tier>> {
    let tier = |code: &str, name: &str, qualify, maintain, multiplier_bp| proto::Tier {
        code: code.into(),
        name: name.into(),
        qualify_points: qualify,
        maintain_points: maintain,
        multiplier_bp,
    };
    prop_oneof![
        Just(vec![]),
        (1..5_000i64, 10_000..100_000i64).prop_map(move |(gold, multiplier)| vec![
            tier("member", "Member", 0, 0, 10_000),
            tier("gold", "Gold ✨", gold, gold / 2, multiplier),
        ]),
        Just(vec![tier("only", "Only", 0, 0, 0)]),
    ]
    .boxed()
}

/// The seeded program's rules: a CreateProgram with them replays, an UpdateProgram with
/// them may find them unchanged.
pub(super) fn seeded_rules() -> proto::ProgramRules {
    proto::ProgramRules {
        daily_cap_points: Some(DAILY_CAP),
        ..usd_rules()
    }
}

pub(super) fn valid_rules() -> BoxedStrategy<proto::ProgramRules> {
    let random = (
        prop_oneof![8 => Just("USD"), 1 => Just("EUR"), 1 => Just("JPY"), 1 => Just("KWD")],
        prop_oneof![
            Just("Europe/Paris"),
            Just("UTC"),
            Just("America/New_York"),
            Just("Pacific/Kiritimati"),
            Just("Pacific/Pago_Pago"),
        ],
        prop_oneof![Just(10_000i64), 0..=1_000_000i64],
        prop_oneof![Just(100i64), 0..100_000i64],
        prop_oneof![
            Just(None),
            (1..100_000i64).prop_map(Some),
            Just(Some(MAX_RULE_POINTS))
        ],
        prop_oneof![Just(365i32), 1..=3_660i32],
        valid_tiers(),
    )
        .prop_map(
            |(currency, timezone, rate, min, cap, days, tiers)| proto::ProgramRules {
                currency: currency.into(),
                timezone: timezone.into(),
                base_rate_bp: rate,
                min_amount_minor: min,
                daily_cap_points: cap,
                points_validity_days: days,
                tiers,
                ..Default::default()
            },
        );
    prop_oneof![1 => Just(seeded_rules()), 2 => random].boxed()
}

pub(super) fn valid_program_id() -> BoxedStrategy<String> {
    prop_oneof![3 => Just(PROGRAM), 2 => prop::sample::select(PROGRAMS)]
        .prop_map(str::to_owned)
        .boxed()
}

pub(super) fn valid_name() -> BoxedStrategy<String> {
    prop_oneof![
        Just("Acme".to_owned()),
        Just(repeated(200, 'é')),
        text(name_char, 1..41),
    ]
    .boxed()
}

// --- requests ----------------------------------------------------------------------------

pub(super) fn create_program() -> impl Strategy<Value = proto::CreateProgramRequest> {
    let valid = (valid_program_id(), valid_name(), valid_rules());
    let wild = (wild_program_id(), wild_string(), wild_rules());
    (valid, wild, mask()).prop_map(|((id, name, rules), (w_id, w_name, w_rules), m)| {
        proto::CreateProgramRequest {
            program_id: pick(m, 0, id, w_id),
            name: pick(m, 1, name, w_name),
            rules: pick(m, 2, Some(rules), w_rules),
        }
    })
}

pub(super) fn get_program() -> impl Strategy<Value = proto::GetProgramRequest> {
    prop_oneof![valid_program_id(), wild_program_id()]
        .prop_map(|program_id| proto::GetProgramRequest { program_id })
}

pub(super) fn update_program() -> impl Strategy<Value = proto::UpdateProgramRequest> {
    let valid = (
        valid_program_id(),
        valid_rules(),
        prop_oneof![Just(0i64), 1..30i64],
        prop_oneof![Just(String::new()), valid_name()],
    );
    let wild = (wild_program_id(), wild_rules(), wild_i64(), wild_string());
    (valid, wild, mask()).prop_map(
        |((id, rules, version, name), (w_id, w_rules, w_version, w_name), m)| {
            proto::UpdateProgramRequest {
                program_id: pick(m, 0, id, w_id),
                rules: pick(m, 1, Some(rules), w_rules),
                expected_rules_version: pick(m, 2, version, w_version),
                name: pick(m, 3, name, w_name),
            }
        },
    )
}

pub(super) fn fresh_member() -> BoxedStrategy<String> {
    (0..FRESH_MEMBERS)
        .prop_map(|i| Uuid::from_u128(0xf022_0000_0000_4000_8000_0000_0000_0000 + i).to_string())
        .boxed()
}

pub(super) fn enroll_member(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::EnrollMemberRequest> {
    let valid = (
        prop_oneof![valid_member(seeded), fresh_member()],
        prop_oneof![
            Just(String::new()),
            Just("1990-05-17".to_owned()),
            Just("2000-02-29".to_owned()),
        ],
        prop_oneof![Just(None), valid_time().prop_map(Some)],
    );
    let birthday = prop_oneof![
        Just("2026-02-30".to_owned()),
        Just("2023-02-29".to_owned()),
        Just("0000-01-01".to_owned()),
        Just("-0001-01-01".to_owned()),
        Just("99999-01-01".to_owned()),
        Just("+1990-05-17".to_owned()),
        Just("1990-5-7".to_owned()),
        Just("2100-01-01".to_owned()),
        Just("1990-05-17T00:00:00Z".to_owned()),
        wild_string(),
    ];
    let wild = (
        wild_program_id(),
        wild_uuid(seeded),
        birthday,
        wild_timestamp(),
    );
    (valid_program_id(), valid, wild, mask(), wild_contacts()).prop_map(
        |(
            program,
            (member, birthday, at),
            (w_program, w_member, w_birthday, w_at),
            m,
            contacts,
        )| {
            proto::EnrollMemberRequest {
                program_id: pick(m, 0, program, w_program),
                member_id: pick(m, 1, member, w_member),
                birthday: pick(m, 2, birthday, w_birthday),
                enrolled_at: pick(m, 3, at, w_at),
                contacts,
            }
        },
    )
}

/// Contacts: none (most often), valid ones, malformed ones, too many.
pub(super) fn wild_contacts() -> BoxedStrategy<Vec<String>> {
    let contact = prop_oneof![
        Just("someone@example.com".to_owned()),
        Just(" Someone@EXAMPLE.com ".to_owned()),
        Just("+33 6 12 34 56 78".to_owned()),
        Just("+1 (415) 555-0100".to_owned()),
        Just("not-a-contact".to_owned()),
        Just("a@b".to_owned()),
        Just("12".to_owned()),
        Just("+".repeat(40)),
        wild_string(),
    ];
    prop_oneof![
        6 => Just(vec![]),
        3 => prop::collection::vec(contact.clone(), 1..4),
        1 => prop::collection::vec(contact, 11..14),
    ]
    .boxed()
}

pub(super) fn get_member(seeded: &Arc<Seeded>) -> impl Strategy<Value = proto::GetMemberRequest> {
    (
        valid_member(seeded),
        wild_program_id(),
        wild_uuid(seeded),
        mask(),
    )
        .prop_map(|(member, w_program, w_member, m)| proto::GetMemberRequest {
            program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
            member_id: pick(m, 1, member, w_member),
        })
}

/// A valid award: either the canonical one of a pool key (so that resending it replays),
/// or a random one (so that a pool key is reused with another payload).
pub(super) fn valid_award(seeded: &Arc<Seeded>) -> BoxedStrategy<proto::AwardRequest> {
    let members = seeded.members.clone();
    let canonical = (0..KEYS).prop_map(move |i| proto::AwardRequest {
        program_id: PROGRAM.into(),
        member_id: members[i as usize % members.len()].clone(),
        idempotency_key: format!("fuzz-key-{i}"),
        source: proto::PurchaseSource::Shopify as i32,
        external_ref: format!("order-{}", i % ORDERS),
        amount_minor: 100 * i64::from(i + 1),
        currency: "USD".into(),
        occurred_at: Some(timestamp(
            start_of_test() - chrono::Duration::hours(i.into()),
        )),
    });
    let random = (
        valid_member(seeded),
        valid_key(),
        1..4i32,
        prop_oneof![
            (0..ORDERS).prop_map(|i| format!("order-{i}")),
            fresh_token().prop_map(|t| format!("order-{t}")),
        ],
        prop_oneof![1..100_000i64, Just(MAX_AMOUNT_MINOR), 1..100i64],
        valid_time(),
    )
        .prop_map(
            |(member, key, source, external_ref, amount, at)| proto::AwardRequest {
                program_id: PROGRAM.into(),
                member_id: member,
                idempotency_key: key,
                source,
                external_ref,
                amount_minor: amount,
                currency: "USD".into(),
                occurred_at: Some(at),
            },
        );
    prop_oneof![canonical, random].boxed()
}

pub(super) fn award(seeded: &Arc<Seeded>) -> BoxedStrategy<proto::AwardRequest> {
    let currency = prop_oneof![
        Just("EUR".to_owned()),
        Just("usd".to_owned()),
        Just("US".to_owned()),
        Just("USDX".to_owned()),
        wild_string(),
    ];
    let wild = (
        wild_program_id(),
        wild_uuid(seeded),
        wild_key(),
        wild_enum(),
        wild_string(),
        wild_i64(),
        currency,
        wild_timestamp(),
    );
    (valid_award(seeded), wild, mask())
        .prop_map(
            |(v, (program, member, key, source, external, amount, currency, at), m)| {
                proto::AwardRequest {
                    program_id: pick(m, 0, v.program_id, program),
                    member_id: pick(m, 1, v.member_id, member),
                    idempotency_key: pick(m, 2, v.idempotency_key, key),
                    source: pick(m, 3, v.source, source),
                    external_ref: pick(m, 4, v.external_ref, external),
                    amount_minor: pick(m, 5, v.amount_minor, amount),
                    currency: pick(m, 6, v.currency, currency),
                    occurred_at: pick(m, 7, v.occurred_at, at),
                }
            },
        )
        .boxed()
}

pub(super) fn award_batch(seeded: &Arc<Seeded>) -> impl Strategy<Value = proto::AwardBatchRequest> {
    let item = (
        award(seeded),
        prop_oneof![3 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(mut award, clear)| {
            if clear && award.program_id == PROGRAM {
                award.program_id.clear();
            }
            award
        });
    let valid_item = valid_award(seeded);
    let awards = prop_oneof![
        200 => vec(item, 0..8),
        20 => vec(valid_award(seeded), 1..20),
        // the limit and one past it: rare, a full batch is 500 awards
        1 => vec(valid_item.clone(), 500),
        1 => vec(valid_item, 501),
    ];
    (valid_program_id(), wild_program_id(), awards, mask()).prop_map(
        |(program, w_program, awards, m)| proto::AwardBatchRequest {
            program_id: pick(m, 0, program, w_program),
            awards,
        },
    )
}

pub(super) fn enroll_batch(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::EnrollBatchRequest> {
    let item = (
        enroll_member(seeded),
        prop_oneof![3 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(mut member, clear)| {
            if clear && member.program_id == PROGRAM {
                member.program_id.clear();
            }
            member
        });
    let fresh = fresh_member().prop_map(|member_id| proto::EnrollMemberRequest {
        member_id,
        ..Default::default()
    });
    let members = prop_oneof![
        200 => vec(item, 0..8),
        // the limit and one past it: rare
        1 => vec(fresh.clone(), 500),
        1 => vec(fresh, 501),
    ];
    (valid_program_id(), wild_program_id(), members, mask()).prop_map(
        |(program, w_program, members, m)| proto::EnrollBatchRequest {
            program_id: pick(m, 0, program, w_program),
            members,
        },
    )
}

pub(super) fn valid_spend(seeded: &Arc<Seeded>) -> BoxedStrategy<proto::SpendRequest> {
    let members = seeded.members.clone();
    let canonical = (0..KEYS).prop_map(move |i| proto::SpendRequest {
        program_id: PROGRAM.into(),
        member_id: members[i as usize % members.len()].clone(),
        idempotency_key: format!("fuzz-key-{i}"),
        points: i64::from(i + 1),
        reference: format!("reward-{i}"),
    });
    let random = (
        valid_member(seeded),
        valid_key(),
        prop_oneof![1..200i64, 1..100_000i64],
        prop_oneof![Just("reward".to_owned()), Just(repeated(256, '😀'))],
    )
        .prop_map(|(member, key, points, reference)| proto::SpendRequest {
            program_id: PROGRAM.into(),
            member_id: member,
            idempotency_key: key,
            points,
            reference,
        });
    prop_oneof![canonical, random].boxed()
}

pub(super) fn spend(seeded: &Arc<Seeded>) -> impl Strategy<Value = proto::SpendRequest> {
    let wild = (
        wild_program_id(),
        wild_uuid(seeded),
        wild_key(),
        wild_i64(),
        wild_string(),
    );
    (valid_spend(seeded), wild, mask()).prop_map(
        |(v, (program, member, key, points, reference), m)| proto::SpendRequest {
            program_id: pick(m, 0, v.program_id, program),
            member_id: pick(m, 1, v.member_id, member),
            idempotency_key: pick(m, 2, v.idempotency_key, key),
            points: pick(m, 3, v.points, points),
            reference: pick(m, 4, v.reference, reference),
        },
    )
}

/// A reference to a seeded entry by id or key, or to whatever a pool key wrote.
pub(super) fn valid_entry_ref(
    ids: Vec<String>,
    seed_keys: Vec<String>,
) -> BoxedStrategy<proto::EntryRef> {
    prop_oneof![
        2 => prop::sample::select(ids).prop_map(Ref::EntryId),
        1 => prop::sample::select(seed_keys).prop_map(Ref::IdempotencyKey),
        2 => pool_key().prop_map(Ref::IdempotencyKey),
    ]
    .prop_map(|r| proto::EntryRef { r#ref: Some(r) })
    .boxed()
}

/// Keys `fuzz-reversal-{i}` of canonical reversals, shared by both reversal RPCs.
pub(super) const REVERSAL_KEYS: u32 = 32;

pub(super) type Reversal = (String, proto::EntryRef, Option<i64>, String);

/// A valid reversal as (key, entry, points, reason): the canonical one of a reversal key
/// (so that resending it replays), or a random one.
pub(super) fn valid_reversal(
    ids: Vec<String>,
    seed_keys: Vec<String>,
    reason: &'static str,
) -> BoxedStrategy<Reversal> {
    let entries = ids.clone();
    let canonical = (0..REVERSAL_KEYS).prop_map(move |i| {
        let entry = entries[i as usize % entries.len()].clone();
        (
            format!("fuzz-reversal-{i}"),
            proto::EntryRef {
                r#ref: Some(Ref::EntryId(entry)),
            },
            Some(i64::from(1 + i % 3)),
            format!("{reason}-{i}"),
        )
    });
    let random = (
        valid_key(),
        valid_entry_ref(ids, seed_keys),
        optional_points(),
        valid_reason(),
    );
    prop_oneof![canonical, random].boxed()
}

pub(super) fn optional_points() -> BoxedStrategy<Option<i64>> {
    prop_oneof![Just(None), (1..80i64).prop_map(Some)].boxed()
}

pub(super) fn wild_optional_points() -> BoxedStrategy<Option<i64>> {
    prop_oneof![Just(None), wild_i64().prop_map(Some)].boxed()
}

pub(super) fn valid_reason() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        Just("refund-1".to_owned()),
        Just(repeated(256, 'é')),
    ]
    .boxed()
}

pub(super) fn reverse_award(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::ReverseAwardRequest> {
    let seed_keys = (0..MEMBERS)
        .flat_map(|m| (0..3).map(move |a| format!("seed-award-{m}-{a}")))
        .collect();
    let valid = valid_reversal(seeded.award_ids.clone(), seed_keys, "refund");
    let wild = (
        wild_program_id(),
        wild_key(),
        wild_entry_ref(seeded),
        wild_optional_points(),
        wild_string(),
    );
    (valid, wild, mask()).prop_map(
        |((key, award, points, reason), (w_program, w_key, w_award, w_points, w_reason), m)| {
            proto::ReverseAwardRequest {
                program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
                idempotency_key: pick(m, 1, key, w_key),
                award: pick(m, 2, Some(award), w_award),
                points: pick(m, 3, points, w_points),
                reason: pick(m, 4, reason, w_reason),
            }
        },
    )
}

pub(super) fn reverse_spend(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::ReverseSpendRequest> {
    let seed_keys = (0..MEMBERS).map(|m| format!("seed-spend-{m}")).collect();
    let valid = valid_reversal(seeded.spend_ids.clone(), seed_keys, "cancel");
    let wild = (
        wild_program_id(),
        wild_key(),
        wild_entry_ref(seeded),
        wild_optional_points(),
        wild_string(),
    );
    (valid, wild, mask()).prop_map(
        |((key, spend, points, reason), (w_program, w_key, w_spend, w_points, w_reason), m)| {
            proto::ReverseSpendRequest {
                program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
                idempotency_key: pick(m, 1, key, w_key),
                spend: pick(m, 2, Some(spend), w_spend),
                points: pick(m, 3, points, w_points),
                reason: pick(m, 4, reason, w_reason),
            }
        },
    )
}

pub(super) fn valid_adjust(seeded: &Arc<Seeded>) -> BoxedStrategy<proto::AdjustRequest> {
    let members = seeded.members.clone();
    let canonical = (0..KEYS).prop_map(move |i| {
        let points = i64::from(i + 1);
        proto::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: members[i as usize % members.len()].clone(),
            idempotency_key: format!("fuzz-key-{i}"),
            points: if i % 2 == 0 { points } else { -points },
            reason: "goodwill".into(),
            actor: "fuzzer".into(),
            ..Default::default()
        }
    });
    let random = (
        valid_member(seeded),
        valid_key(),
        prop_oneof![
            1..500i64,
            -500..0i64,
            Just(MAX_RULE_POINTS),
            Just(-MAX_RULE_POINTS)
        ],
        prop_oneof![Just("goodwill".to_owned()), Just(repeated(256, '😀'))],
        prop_oneof![Just("ops@acme".to_owned()), Just("Zoë".to_owned())],
    )
        .prop_map(
            |(member, key, points, reason, actor)| proto::AdjustRequest {
                program_id: PROGRAM.into(),
                member_id: member,
                idempotency_key: key,
                points,
                reason,
                actor,
                ..Default::default()
            },
        );
    prop_oneof![canonical, random].boxed()
}

pub(super) fn adjust(seeded: &Arc<Seeded>) -> impl Strategy<Value = proto::AdjustRequest> {
    let wild = (
        wild_program_id(),
        wild_uuid(seeded),
        wild_key(),
        wild_i64(),
        wild_string(),
        wild_string(),
    );
    (valid_adjust(seeded), wild, mask()).prop_map(
        |(v, (program, member, key, points, reason, actor), m)| proto::AdjustRequest {
            program_id: pick(m, 0, v.program_id, program),
            member_id: pick(m, 1, v.member_id, member),
            idempotency_key: pick(m, 2, v.idempotency_key, key),
            points: pick(m, 3, v.points, points),
            reason: pick(m, 4, v.reason, reason),
            actor: pick(m, 5, v.actor, actor),
            ..Default::default()
        },
    )
}

pub(super) fn list_entries(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::ListEntriesRequest> {
    let valid = (
        valid_member(seeded),
        prop_oneof![Just(0i32), 1..=200i32],
        prop_oneof![
            Just(String::new()),
            (1..5_000i64).prop_map(|seq| seq.to_string())
        ],
    );
    let token = prop_oneof![
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        Just("99999999999999999999".to_owned()),
        Just("1e3".to_owned()),
        Just(" 12".to_owned()),
        Just("+12".to_owned()),
        Just("abc".to_owned()),
        Just("MTIz".to_owned()),
        wild_string(),
    ];
    let wild = (wild_program_id(), wild_uuid(seeded), wild_i32(), token);
    (valid, wild, mask()).prop_map(
        |((member, size, token), (w_program, w_member, w_size, w_token), m)| {
            proto::ListEntriesRequest {
                program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
                member_id: pick(m, 1, member, w_member),
                page_size: pick(m, 2, size, w_size),
                page_token: pick(m, 3, token, w_token),
            }
        },
    )
}

pub(super) fn get_liability() -> impl Strategy<Value = proto::GetLiabilityRequest> {
    let now = start_of_test();
    let valid = (0..800 * 86_400i64, 0..800 * 86_400i64).prop_map(move |(a, b)| {
        let (from, to) = (a.max(b), a.min(b));
        (
            Some(timestamp(now - chrono::Duration::seconds(from))),
            Some(timestamp(now - chrono::Duration::seconds(to))),
        )
    });
    let wild = (wild_program_id(), wild_timestamp(), wild_timestamp());
    (valid_program_id(), valid, wild, mask()).prop_map(
        |(program, (from, to), (w_program, w_from, w_to), m)| proto::GetLiabilityRequest {
            program_id: pick(m, 0, program, w_program),
            from: pick(m, 1, from, w_from),
            to: pick(m, 2, to, w_to),
        },
    )
}

pub(super) fn tier_status(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::GetTierStatusRequest> {
    let wild = (wild_program_id(), wild_uuid(seeded));
    (valid_member(seeded), wild, mask()).prop_map(|(member, (w_program, w_member), m)| {
        proto::GetTierStatusRequest {
            program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
            member_id: pick(m, 1, member, w_member),
        }
    })
}

pub(super) fn evaluate_member(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::EvaluateMemberRequest> {
    tier_status(seeded).prop_map(|request| proto::EvaluateMemberRequest {
        program_id: request.program_id,
        member_id: request.member_id,
    })
}

pub(super) fn tier_history(
    seeded: &Arc<Seeded>,
) -> impl Strategy<Value = proto::ListTierHistoryRequest> {
    list_entries(seeded).prop_map(|request| proto::ListTierHistoryRequest {
        program_id: request.program_id,
        member_id: request.member_id,
        page_size: request.page_size,
        page_token: request.page_token,
    })
}

pub(super) fn set_tier(seeded: &Arc<Seeded>) -> impl Strategy<Value = proto::SetTierRequest> {
    let now = start_of_test();
    let valid = (
        valid_member(seeded),
        prop_oneof![
            Just("member".to_owned()),
            Just("silver".to_owned()),
            Just("gold".to_owned()),
            Just("vip".to_owned())
        ],
        prop_oneof![
            Just(None),
            (1..400i64).prop_map(move |days| Some(timestamp(now + chrono::Duration::days(days))))
        ],
        valid_key(),
        valid_reason(),
    );
    let wild = (
        (wild_program_id(), wild_uuid(seeded), wild_string()),
        (wild_timestamp(), wild_string(), wild_string(), wild_key()),
    );
    (valid, wild, mask()).prop_map(
        |(
            (member, tier, hold, key, reason),
            ((w_program, w_member, w_tier), (w_hold, w_reason, w_actor, w_key)),
            m,
        )| proto::SetTierRequest {
            program_id: pick(m, 0, PROGRAM.to_owned(), w_program),
            member_id: pick(m, 1, member, w_member),
            tier_code: pick(m, 2, tier, w_tier),
            hold_until: pick(m, 3, hold, w_hold),
            reason: pick(m, 4, reason, w_reason),
            actor: pick(m, 5, "support@acme".to_owned(), w_actor),
            idempotency_key: pick(m, 6, key, w_key),
        },
    )
}
