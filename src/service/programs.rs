//! Creating and changing programs and their rules.
use super::{run_to_completion, Error};
use crate::clock::Clock;
use crate::domain::{InvalidField, ProgramId, ProgramRules, RulesDocument};
use crate::store;
use deadpool_postgres::Pool;
use std::sync::Arc;

/// A program as callers see it.
#[derive(Debug, Clone)]
pub struct ProgramView {
    pub program_id: String,
    pub name: String,
    pub rules_version: i64,
    pub rules: RulesDocument,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<store::programs::StoredProgram> for ProgramView {
    fn from(stored: store::programs::StoredProgram) -> Self {
        Self {
            program_id: stored.program_id,
            name: stored.name,
            rules_version: stored.rules_version,
            rules: stored.rules,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
        }
    }
}

/// The program use cases.
#[derive(Clone)]
pub struct Programs {
    db: Pool,
    clock: Arc<dyn Clock>,
}

impl Programs {
    pub fn new(db: Pool, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock }
    }

    /// Creates a program. The same program with the same settings replays; different
    /// settings are ALREADY_EXISTS naming what differs. Returns whether it replayed.
    pub async fn create(
        &self,
        program: ProgramId,
        name: String,
        rules: RulesDocument,
        by: &str,
    ) -> Result<(ProgramView, bool), Error> {
        check_name(&name)?;
        let rules = ProgramRules::parse(rules)?.document;
        let programs = self.clone();
        let by = by.to_owned();
        run_to_completion(async move {
            let now = programs.clock.now();
            let mut client = programs.db.get().await?;
            let tx = client.transaction().await?;
            let created = store::programs::insert(&tx, &program, &name, &rules, now, &by).await?;
            let stored = store::programs::get(&*tx, &program)
                .await?
                .ok_or_else(|| Error::Unexpected(anyhow::anyhow!("program vanished")))?;
            tx.commit().await?;
            if created {
                return Ok((stored.into(), false));
            }
            let differing = settings_differences(&stored, &name, &rules);
            if differing.is_empty() {
                return Ok((stored.into(), true));
            }
            Err(Error::ProgramExists {
                program: program.clone(),
                differing_fields: differing,
            })
        })
        .await
    }

    pub async fn get(&self, program: &ProgramId) -> Result<ProgramView, Error> {
        let client = self.db.get().await?;
        store::programs::get(&**client, program)
            .await?
            .map(ProgramView::from)
            .ok_or_else(|| super::members::program_not_found(program))
    }

    /// Replaces the rules as a new version. Identical rules write nothing, so a retry is
    /// harmless; `expected_rules_version` (0 = none) guards against lost updates.
    /// Returns whether nothing changed.
    pub async fn update(
        &self,
        program: ProgramId,
        name: Option<String>,
        rules: RulesDocument,
        expected_rules_version: Option<i64>,
        by: &str,
    ) -> Result<(ProgramView, bool), Error> {
        if let Some(name) = &name {
            check_name(name)?;
        }
        let rules = ProgramRules::parse(rules)?.document;
        let programs = self.clone();
        let by = by.to_owned();
        run_to_completion(async move {
            let now = programs.clock.now();
            let mut client = programs.db.get().await?;
            let tx = client.transaction().await?;
            let current = store::programs::get_for_update(&tx, &program)
                .await?
                .ok_or_else(|| super::members::program_not_found(&program))?;
            let name = name.unwrap_or_else(|| current.name.clone());
            if settings_differences(&current, &name, &rules).is_empty() {
                return Ok((current.into(), true));
            }
            if let Some(expected) = expected_rules_version {
                if expected != current.rules_version {
                    return Err(Error::StaleRulesVersion {
                        program: program.clone(),
                        expected,
                        current: current.rules_version,
                    });
                }
            }
            let version = current.rules_version + 1;
            store::programs::update(&tx, &program, &name, version, &rules, now, &by).await?;
            let stored = store::programs::get(&*tx, &program)
                .await?
                .ok_or_else(|| Error::Unexpected(anyhow::anyhow!("program vanished")))?;
            tx.commit().await?;
            Ok((stored.into(), false))
        })
        .await
    }
}

fn check_name(name: &str) -> Result<(), InvalidField> {
    let chars = name.chars().count();
    if chars == 0 || chars > 200 || name.chars().any(char::is_control) {
        return Err(InvalidField::new(
            "name",
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(())
}

fn settings_differences(
    stored: &store::programs::StoredProgram,
    name: &str,
    rules: &RulesDocument,
) -> Vec<String> {
    let mut differing = Vec::new();
    if stored.name != name {
        differing.push("name".to_owned());
    }
    let (old, new) = (&stored.rules, rules);
    let fields = [
        ("rules.currency", old.currency != new.currency),
        ("rules.timezone", old.timezone != new.timezone),
        ("rules.base_rate_bp", old.base_rate_bp != new.base_rate_bp),
        (
            "rules.min_amount_minor",
            old.min_amount_minor != new.min_amount_minor,
        ),
        (
            "rules.daily_cap_points",
            old.daily_cap_points != new.daily_cap_points,
        ),
        (
            "rules.points_validity_days",
            old.points_validity_days != new.points_validity_days,
        ),
        ("rules.tiers", old.tiers != new.tiers),
    ];
    differing.extend(
        fields
            .iter()
            .filter(|(_, differs)| *differs)
            .map(|(field, _)| (*field).to_owned()),
    );
    differing
}
